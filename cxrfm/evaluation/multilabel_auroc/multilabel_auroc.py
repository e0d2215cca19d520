"""`evaluate` module: multi-label macro/per-class AUROC and AUPRC with bootstrap CIs (CheXFound protocol).

Load it offline from the installed package::

    import evaluate
    from cxrfm.evaluation import metric_path

    metric = evaluate.load(metric_path("multilabel_auroc"))
    metric.add_batch(predictions=scores, references=labels)  # (B, C) each, any number of batches
    results = metric.compute(label_names=names, n_bootstrap=1000, seed=0)

The numbers come from :func:`cxrfm.evaluation.metrics.multilabel_metrics` (one implementation, two entry points).
"""

import datasets
import evaluate
import numpy as np

from cxrfm.evaluation.metrics import multilabel_metrics

_DESCRIPTION = """
Per-class and macro-averaged AUROC and AUPRC (average precision) for multi-label classification, with
percentile-bootstrap confidence intervals over images (paired across classes), as in the CheXFound paper.
Values equal scikit-learn's roc_auc_score / average_precision_score. Labels NaN or -1 are ignored per class;
classes without positives or negatives are left out of the macro average and reported in `skipped_classes`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, C) scores (probabilities or logits), one row per image.
    references: (N, C) labels 0/1, NaN or -1 for "not labelled".
    label_names: optional C class names.
    n_bootstrap: bootstrap resamples (default 1000; 0 = no intervals).
    seed: resampling seed (default 0).
    ci: interval level (default 0.95).
Returns:
    {"macro": {"auroc", "auroc_ci", "auprc", "auprc_ci", ...}, "per_class": {name: {...}}, "skipped_classes", ...}
Example:
    >>> metric = evaluate.load(metric_path("multilabel_auroc"))
    >>> metric.compute(predictions=[[0.9, 0.2], [0.1, 0.8], [0.7, 0.1]], references=[[1, 0], [0, 1], [0, 1]],
    ...                n_bootstrap=0)["macro"]["auroc"]
    0.75
"""

_CITATION = """
@article{yang2025chexfound,
  title={Chest X-ray Foundation Model with Global and Local Representations Integration},
  author={Yang, Zefan and Xu, Xuanang and Zhang, Jiajin and Wang, Ge and Kalra, Mannudeep K. and Yan, Pingkun},
  journal={arXiv preprint arXiv:2502.05142},
  year={2025}
}
"""


class MultilabelAUROC(evaluate.Metric):
    """Multi-label AUROC / AUPRC with bootstrap confidence intervals."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references, label_names=None, n_bootstrap=1000, seed=0, ci=0.95):
        return multilabel_metrics(
            np.asarray(references, dtype=np.float64),
            np.asarray(predictions, dtype=np.float64),
            label_names=label_names,
            n_bootstrap=n_bootstrap,
            seed=seed,
            ci=ci,
        )
