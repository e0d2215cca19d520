"""Linear evaluation of a frozen image encoder (MGCA paper 004, Sec. 4.2; shared with CheXFound features).

Protocol (official `mgca_finetuner.py` / `ssl_finetuner.py`):
- the encoder is frozen and in eval mode; features are its global output (MGCA: ViT [CLS] after the final norm or
  pooled ResNet layer 4, not the 128-d projection; CheXFound: the pooled CLS token);
- a linear head is trained on a random `fraction` (1%, 10%, 100%) of the training split (sampled without
  stratification, as `df.sample(frac, random_state)`), AdamW lr 5e-4, weight decay 1e-6, batch 48; the official
  50 epochs with early stopping on the validation loss become a fixed number of epochs here (`epochs`), the head
  with the lowest validation loss being kept when a validation split is given;
- images go through the model folder's saved image processor (how it was trained or converted; an official MGCA
  checkpoint converted by `cxrfm convert mgca` carries the official letterbox + centre crop), or, without one, a
  shortest-edge resize and centre crop to `image_size`;
- multi-label tasks (CheXpert 5, RSNA) report AUROC with bootstrap CIs (`cxrfm.evaluation.metrics`); single-label
  tasks (COVIDx 3-class) report accuracy with a bootstrap CI over the same image resamples.

COVIDx: the paper names version 6, the official constants read COVIDx 9A, and neither is distributed any more;
`cxrfm.processing.datasets.load_covidx` reads the current COVIDx CXR-2/3/4 split files (binary COVID-19) and the
older 3-class releases (normal / pneumonia / COVID-19) when given one.

    python -m cxrfm.training.linear_transfer --model_name_or_path outputs/mgca_tiny/model --dataset phantom \
        --output_dir outputs/linear_mgca_tiny
"""

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoModel

from ..evaluation.metrics import bootstrap_indices, multilabel_metrics, percentile_interval
from ..processing.datasets import LoaderOptions, get_label_names, load_dataset_by_name
from ..processing.image_processing_cxr import CXRImageProcessor
from .recipe import TrainingArguments
from .recipe import parse_args as parse_recipe_args

logger = logging.getLogger(__name__)
FRACTIONS = (0.01, 0.1, 1.0)


def encoder_features(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixel_values (B, C, H, W) -> global features (B, D) of a frozen encoder: `encode_image` for MGCA (the
    official linear-probe feature), `pooler_output` otherwise (CheXFound's CLS token)."""
    model.eval().requires_grad_(False)
    if hasattr(model, "encode_image"):
        return lambda pixel_values: model.encode_image(pixel_values)[0]
    return lambda pixel_values: model(pixel_values=pixel_values).pooler_output


@torch.no_grad()
def extract_features(encode, images, image_processor, batch_size: int = 64) -> np.ndarray:
    """Features (N, D) of a sequence of images (anything the image processor reads), in order."""
    parts = []
    for start in range(0, len(images), batch_size):
        pixel_values = image_processor(list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        parts.append(encode(pixel_values).float().cpu())
    return torch.cat(parts).numpy()


def sample_fraction(n_rows: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of a random `fraction` of `n_rows` (at least one row), without replacement."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    count = max(1, int(round(fraction * n_rows)))
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=count, replace=False))


def _head_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        known = ~torch.isnan(labels)  # unlabelled entries (NaN) carry no loss
        return F.binary_cross_entropy_with_logits(logits[known], labels[known])
    return F.cross_entropy(logits, labels.long())


def train_linear_head(
    features: np.ndarray,
    labels: np.ndarray,
    multi_label: bool,
    epochs: int = 50,
    learning_rate: float = 5e-4,
    weight_decay: float = 1e-6,
    batch_size: int = 48,
    seed: int = 0,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> torch.nn.Linear:
    """A linear head on frozen features: (N, D) features, labels (N, C) 0/1/NaN (multi-label) or (N,) class ids.
    Keeps the epoch with the lowest validation loss when `validation` = (features, labels) is given."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.float32)
    num_outputs = y.shape[1] if multi_label else int(y.max().item()) + 1
    head = torch.nn.Linear(x.shape[1], num_outputs)
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best_state, best_loss = None, float("inf")
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = _head_loss(head(x[batch]), y[batch], multi_label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if validation is not None:
            with torch.no_grad():
                val_x = torch.as_tensor(validation[0], dtype=torch.float32)
                val_loss = _head_loss(head(val_x), torch.as_tensor(validation[1], dtype=torch.float32), multi_label).item()
            if val_loss < best_loss:
                best_loss, best_state = val_loss, {k: v.clone() for k, v in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)
    return head


def accuracy_with_ci(labels: np.ndarray, predictions: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Accuracy and its percentile-bootstrap interval over image resamples (same resamples as `multilabel_metrics`)."""
    correct = (np.asarray(labels) == np.asarray(predictions)).astype(float)
    replicates = np.array([correct[bootstrap_indices(len(correct), seed, b)].mean() for b in range(n_bootstrap)])
    return {"accuracy": float(correct.mean()), "accuracy_ci": percentile_interval(replicates, ci) if n_bootstrap else None}


def evaluate_head(head, features, labels, multi_label: bool, label_names=None, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Macro AUROC/AUPRC with CIs (multi-label) or accuracy with a CI (single-label) on held-out features."""
    with torch.no_grad():
        logits = head(torch.as_tensor(features, dtype=torch.float32)).numpy()
    if multi_label:
        return multilabel_metrics(labels, logits, label_names, n_bootstrap=n_bootstrap, seed=seed)["macro"]
    return accuracy_with_ci(labels, logits.argmax(axis=1), n_bootstrap, seed)


def linear_transfer(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    multi_label: bool,
    fractions=FRACTIONS,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    label_names=None,
    seed: int = 0,
    n_bootstrap: int = 1000,
    **head_kwargs,
) -> dict:
    """{fraction: test metrics with CIs} for linear heads trained on each fraction of the training features."""
    results = {}
    for fraction in fractions:
        rows = sample_fraction(len(train[0]), fraction, seed)
        head = train_linear_head(train[0][rows], train[1][rows], multi_label, seed=seed, validation=validation, **head_kwargs)
        results[fraction] = evaluate_head(head, test[0], test[1], multi_label, label_names, n_bootstrap, seed)
        logger.info("fraction %g (%d rows): %s", fraction, len(rows), results[fraction])
    return results


@dataclass(kw_only=True)
class LinearTransferArguments(TrainingArguments):
    model_name_or_path: str = field(metadata={"help": "Saved MGCAModel / CheXFoundModel folder (required)."})
    label_names: list[str] = field(default_factory=list, metadata={"help": "Classes to evaluate (default: all)."})
    multi_label: bool = True
    fractions: list[float] = field(default_factory=lambda: list(FRACTIONS))
    processor_from_model: bool = field(default=True, metadata={
        "help": "Preprocess with the image processor saved in the model folder (how the model was trained or converted, "
                "e.g. MGCA's official letterbox); false, or a folder without one, uses image_size/image_mean/image_std."})
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    learning_rate: float = 5e-4
    weight_decay: float = 1e-6
    batch_size: int = 48
    num_epochs: int = 50
    n_bootstrap: int = 1000


def image_processor_for(args: LinearTransferArguments) -> CXRImageProcessor:
    """The model folder's saved image processor (with `processor_from_model` and when the folder has one), else a
    shortest-edge resize + centre crop to `image_size` normalised with `image_mean` / `image_std`."""
    folder = Path(args.model_name_or_path)
    saved = [folder / name for name in ("preprocessor_config.json", "processor_config.json")]
    if args.processor_from_model and any(path.is_file() for path in saved):
        processor = AutoImageProcessor.from_pretrained(folder)
        logger.info("Image processor from %s: %s", folder, type(processor).__name__)
        return processor
    return CXRImageProcessor(
        size=args.image_size, crop_size=args.image_size, image_mean=args.image_mean, image_std=args.image_std
    )


def run(args: LinearTransferArguments) -> dict:
    """Features of train/validation/test through the frozen encoder, then `linear_transfer`; writes results.json."""
    data = load_dataset_by_name(args.dataset, LoaderOptions(root=args.data_root, splits=("train", "validation", "test")))
    names = list(get_label_names(data["train"]))
    encode = encoder_features(AutoModel.from_pretrained(args.model_name_or_path))
    processor = image_processor_for(args)
    split_arrays = {}
    for split in ("train", "validation", "test"):
        labels = np.asarray(data[split]["labels"], dtype=float)
        if args.label_names:
            labels = labels[:, [names.index(name) for name in args.label_names]]
        split_arrays[split] = (extract_features(encode, data[split]["image"], processor), labels)
    results = linear_transfer(
        split_arrays["train"], split_arrays["test"], args.multi_label, args.fractions, split_arrays["validation"],
        args.label_names or names, args.seed, args.n_bootstrap, epochs=args.num_epochs,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, batch_size=args.batch_size,
    )
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(
        {"args": asdict(args), "image_processor": processor.to_dict(), "results": {str(k): v for k, v in results.items()}},
        indent=2,
    ))
    return results


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return run(parse_recipe_args(LinearTransferArguments, argv))


if __name__ == "__main__":
    main()
