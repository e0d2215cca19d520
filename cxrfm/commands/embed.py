"""`cxrfm embed MODEL INPUTS... --output embeddings.safetensors|.parquet`: one embedding per image file.

The model's pooled image embedding: `pooler_output` of a backbone (CheXFound: the final-normed CLS token), or
`get_image_features` of an image-text model (relaxed CLIP, MGCA). Files are decoded and preprocessed in DataLoader
workers; unreadable ones are skipped and listed with the reason in OUTPUT.skipped.csv (`--strict`: exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ._images import add_input_arguments, collect_inputs, report_skipped, require_some, run_batches

logger = logging.getLogger(__name__)

FORMATS = (".safetensors", ".parquet")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "embed", help="embed a folder, glob or CSV of DICOM/PNG/JPEG files",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="save_pretrained folder or Hub repo id of an image model")
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="embeddings file: .safetensors ('embeddings' (N, D) + file names in the metadata) or "
                        ".parquet (columns 'file' and 'embedding')")
    return parser


def load_image_model(name: str):
    """(model in eval mode, its image processor) from a folder or repo id, through the installed cxrfm classes."""
    import cxrfm  # noqa: F401  (registers every family and the processor with the Auto classes)
    from transformers import AutoImageProcessor, AutoModel

    from cxrfm.hub import resolve_model_path

    path = resolve_model_path(name, "model")
    return AutoModel.from_pretrained(path).eval(), AutoImageProcessor.from_pretrained(path)


def image_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, D) pooled image embeddings (see the module docstring)."""
    if hasattr(model, "get_image_features"):
        features = model.get_image_features(pixel_values=pixel_values)
        return features if isinstance(features, torch.Tensor) else features.pooler_output
    return model(pixel_values=pixel_values).pooler_output


def write_embeddings(output: Path, files: list[str], embeddings: torch.Tensor, model_name: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"embeddings": embeddings.contiguous()}, str(output),
                  metadata={"files": json.dumps(files), "model": model_name})
    else:
        import pandas as pd

        pd.DataFrame({"file": files, "embedding": list(embeddings.numpy())}).to_parquet(output, index=False)


def run(args: argparse.Namespace) -> int:
    if args.output.suffix not in FORMATS:
        raise ValueError(f"--output {args.output}: unknown format {args.output.suffix!r}; use one of {FORMATS}.")
    paths = collect_inputs(args.inputs, args.path_column)
    model, processor = load_image_model(args.model)
    rows: dict[int, torch.Tensor] = {}

    def step(indices, pixel_values):
        for index, embedding in zip(indices, image_embeddings(model, pixel_values)):
            rows[index] = embedding

    skipped = run_batches(paths, processor, args, "embed", step)
    require_some(len(rows), skipped, len(paths))
    order = sorted(rows)
    write_embeddings(args.output, [str(paths[i]) for i in order], torch.stack([rows[i] for i in order]).float(),
                     args.model)
    report_skipped(skipped, args.output, args, len(paths))
    logger.info("Wrote %d embeddings of size %d to %s", len(order), rows[order[0]].numel(), args.output)
    print(args.output)
    return 0
