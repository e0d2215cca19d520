"""`cxrfm zero-shot MODEL INPUTS... --findings "Edema,Pleural Effusion" --output scores.csv`.

MODEL is an image-text model folder (relaxed CLIP / CXR-CML, with its processor and tokenizer). Each finding gets
an independent probability from the positive prompt "{finding}" against the negative "no {finding}" (CheXzero's
pair softmax; findings do not compete). The CSV has a `file` column and one column per finding; `--output -`
writes it to stdout. Unreadable files are skipped and listed with the reason (`--strict`: exit 2).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ._images import add_input_arguments, collect_inputs, report_skipped, require_some, run_batches
from .predict import write_csv

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "zero-shot", help="image-text model + findings -> CSV of zero-shot probabilities",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="save_pretrained folder or Hub repo id of a relaxed-CLIP model with its processor")
    add_input_arguments(parser)
    findings = parser.add_mutually_exclusive_group(required=True)
    findings.add_argument("--findings", help="comma-separated findings, e.g. 'Edema,Pleural Effusion'")
    findings.add_argument("--findings-file", type=Path, help="text file with one finding per line")
    findings.add_argument("--label-set", help="a named label set, e.g. chexpert-5, chexpert-13, padchest-61")
    parser.add_argument("-o", "--output", type=Path, required=True, help="scores CSV ('-' for stdout)")
    return parser


def parse_findings(args: argparse.Namespace) -> list[str]:
    from cxrfm.evaluation.zero_shot import ZERO_SHOT_LABEL_SETS

    if args.label_set:
        if args.label_set not in ZERO_SHOT_LABEL_SETS:
            raise ValueError(f"--label-set {args.label_set!r}: unknown; known sets: {sorted(ZERO_SHOT_LABEL_SETS)}.")
        findings = list(ZERO_SHOT_LABEL_SETS[args.label_set])
    elif args.findings_file:
        if not args.findings_file.is_file():
            raise FileNotFoundError(f"--findings-file {args.findings_file}: no such file.")
        findings = [line.strip() for line in args.findings_file.read_text().splitlines() if line.strip()]
    else:
        findings = [item.strip() for item in args.findings.split(",") if item.strip()]
    if not findings:
        raise ValueError("no findings given: --findings, --findings-file or --label-set must name at least one.")
    duplicates = sorted({f for f in findings if findings.count(f) > 1})
    if duplicates:
        raise ValueError(f"findings listed twice: {duplicates}.")
    return findings


def load_image_text_model(name: str):
    import cxrfm  # noqa: F401  (registers the families and processors)
    from transformers import AutoModel, AutoProcessor

    from cxrfm.hub import resolve_model_path

    path = resolve_model_path(name, "model")
    model = AutoModel.from_pretrained(path).eval()
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ValueError(f"model {name!r}: {type(model).__name__} has no text tower; zero-shot needs an image-text "
                         "model such as RelaxedCLIPModel.")
    processor = AutoProcessor.from_pretrained(path)
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise ValueError(f"model {name!r}: its folder has no processor with both an image processor and a tokenizer "
                         "(save a CXRCLIPProcessor next to the model).")
    return model, processor


def run(args: argparse.Namespace) -> int:
    from cxrfm.evaluation.zero_shot import encode_images, pair_softmax_probabilities, prompt_embeddings

    findings = parse_findings(args)
    paths = collect_inputs(args.inputs, args.path_column)
    model, processor = load_image_text_model(args.model)
    positive, negative = prompt_embeddings(model, processor.tokenizer, findings)
    rows: dict[int, torch.Tensor] = {}

    def step(indices, pixel_values):
        probabilities = pair_softmax_probabilities(encode_images(model, pixel_values), positive, negative)
        rows.update(zip(indices, probabilities.float()))

    skipped = run_batches(paths, processor.image_processor, args, "zero-shot", step)
    require_some(len(rows), skipped, len(paths))
    order = sorted(rows)
    write_csv(args.output, [str(paths[i]) for i in order], findings, torch.stack([rows[i] for i in order]).numpy())
    report_skipped(skipped, Path("zero-shot.csv") if str(args.output) == "-" else args.output, args, len(paths))
    if str(args.output) != "-":
        print(args.output)
    return 0
