"""`cxrfm export onnx FOLDER OUT.onnx [--outputs pooled|last4|logits]`: a CheXFound or GLoRI folder -> one ONNX file.

The batch size is dynamic, and so is the image size (any multiple of the patch size).
The exported file is run with onnxruntime on an example input and checked against torch before the command reports
success; the file path goes to stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="export a model folder to another runtime (ONNX)",
        description="Export a saved model folder to another runtime (one sub-command per format).",
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx", help="CheXFound backbone or GLoRI classifier -> .onnx (dynamic batch and image size)",
        description=(
            "Export a CheXFoundModel or GLoRIForMultiLabel folder to ONNX (torch.onnx dynamo exporter). Input "
            "'pixel_values' (B, C, H, W) as the folder's image processor produces. Outputs: pooled -> pooler_output "
            "(B, D); last4 -> patch_tokens (B, N, n*D) and cls_tokens (B, n*D), the GLoRI head's input; logits "
            "(GLoRI folder) -> logits (B, C) and attention_maps (B, C, h, w). The file is checked against torch "
            "with onnxruntime before the command succeeds."
        ),
    )
    onnx.add_argument("folder", type=Path, help="CheXFoundModel or GLoRIForMultiLabel save_pretrained folder")
    onnx.add_argument("output", type=Path, help="the .onnx file to write")
    onnx.add_argument(
        "--outputs", choices=("pooled", "last4", "logits"), default=None,
        help="what the graph returns (default: pooled for a backbone folder, logits for a GLoRI folder)",
    )
    onnx.add_argument("--n-last-blocks", type=int, default=4, help="blocks concatenated by --outputs last4 (backbone)")
    onnx.add_argument("--atol", type=float, default=1e-4, help="tolerance of the onnxruntime-vs-torch check")
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    return parser


def run(args: argparse.Namespace) -> int:
    from cxrfm.export_onnx import export_onnx

    result = export_onnx(
        args.folder, args.output, outputs=args.outputs, n_last_blocks=args.n_last_blocks, atol=args.atol,
        overwrite=args.overwrite,
    )
    print(result["path"])  # stdout: the file, so the command composes in a pipeline
    return 0
