"""`cxrfm predict MODEL INPUTS... --output predictions.csv [--attention-dir DIR]`: per-finding probabilities.

MODEL is a GLoRI / linear-probe classifier folder (`GLoRIForMultiLabel`). The CSV has a `file` column and one
column per finding with its sigmoid probability, in the model's label order; `--output -` writes it to stdout.
`--attention-dir` also saves, per image, one PNG with each finding's attention over the radiograph (GLoRI head).
Unreadable files are skipped and listed with the reason in OUTPUT.skipped.csv (`--strict`: exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ._images import add_input_arguments, collect_inputs, report_skipped, require_some, run_batches

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="GLoRI classifier -> CSV of per-finding probabilities (+ attention PNGs)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="save_pretrained folder or Hub repo id of a GLoRIForMultiLabel classifier")
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help="predictions CSV ('-' for stdout)")
    parser.add_argument("--attention-dir", type=Path, default=None,
                        help="folder for one attention-overlay PNG per image (GLoRI head only)")
    parser.add_argument("--top-k", type=int, default=None, help="draw only the K most probable findings per image")
    return parser


def load_classifier(name: str):
    import cxrfm  # noqa: F401  (registers GLoRIForMultiLabel and the processor with the Auto classes)
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from cxrfm.hub import resolve_model_path

    path = resolve_model_path(name, "model")
    config = AutoConfig.from_pretrained(path)
    if getattr(config, "problem_type", None) != "multi_label_classification":
        raise ValueError(f"model {name!r}: model_type {config.model_type!r} is not a multi-label classifier "
                         "(train a GLoRI head with cxrfm.training.train_glori; for embeddings use `cxrfm embed`).")
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    return model, AutoImageProcessor.from_pretrained(path)


def write_csv(output: Path, files: list[str], names: list[str], probabilities) -> None:
    import pandas as pd

    frame = pd.DataFrame(probabilities, columns=names)
    frame.insert(0, "file", files)
    if str(output) == "-":
        frame.to_csv(sys.stdout, index=False, float_format="%.6f")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(output, index=False, float_format="%.6f")


def run(args: argparse.Namespace) -> int:
    from cxrfm.visualization import save_attention_overlays

    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}.")
    paths = collect_inputs(args.inputs, args.path_column)
    model, processor = load_classifier(args.model)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    want_attention = args.attention_dir is not None
    if want_attention and getattr(model.config, "head", "glori") != "glori":
        raise ValueError(f"--attention-dir needs a GLoRI head; {args.model} has head={model.config.head!r}.")
    rows: dict[int, torch.Tensor] = {}

    def step(indices, pixel_values):
        outputs = model(pixel_values=pixel_values, output_attentions=want_attention)
        probabilities = torch.sigmoid(outputs.logits.float())
        for row, index in enumerate(indices):
            rows[index] = probabilities[row]
            if want_attention:
                findings = [{"label": name, "score": float(probabilities[row, k]),
                             "attention_map": outputs.attention_maps[row, k].numpy()} for k, name in enumerate(names)]
                findings.sort(key=lambda item: -item["score"])
                save_attention_overlays(pixel_values[row], findings[: args.top_k],
                                        args.attention_dir / f"{index:05d}_{paths[index].stem}.png")

    skipped = run_batches(paths, processor, args, "predict", step)
    require_some(len(rows), skipped, len(paths))
    order = sorted(rows)
    write_csv(args.output, [str(paths[i]) for i in order], names, torch.stack([rows[i] for i in order]).numpy())
    report_skipped(skipped, Path("predictions.csv") if str(args.output) == "-" else args.output, args, len(paths))
    if str(args.output) != "-":
        print(args.output)
    return 0
