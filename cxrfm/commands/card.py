"""`cxrfm card FOLDER [--results results.json]`: render a folder's model card (README.md) from its results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# config.json model_type -> card family.
MODEL_TYPE_FAMILIES = {"chexfound": "chexfound", "chexfound_glori": "glori", "relaxed_clip": "relaxed_clip",
                       "mgca": "mgca"}


def family_of(folder: Path) -> str:
    """The card family of a saved folder, from `config.json`'s model_type."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; FOLDER must be a save_pretrained folder.")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in MODEL_TYPE_FAMILIES:
        raise ValueError(f"{config_path}: model_type {model_type!r} has no card template; pass --family "
                         f"(one of {sorted(set(MODEL_TYPE_FAMILIES.values()))}).")
    return MODEL_TYPE_FAMILIES[model_type]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "card", help="render README.md (model card) and results.json into a saved folder",
        description="Render FOLDER/README.md from evaluation results (default FOLDER/results.json; every "
        "multilabel_metrics result in it becomes a model-index entry with its CI) and write results.json beside it.",
    )
    parser.add_argument("folder", type=Path, help="a save_pretrained folder")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (default: FOLDER/results.json)")
    parser.add_argument("--family", default=None, help="chexfound, glori, relaxed_clip, cml or mgca "
                        "(default: from config.json)")
    parser.add_argument("--model-id", default=None, help="repo id the card's usage snippet loads (default: folder name)")
    parser.add_argument("--dataset", action="append", default=None, dest="datasets",
                        help="Hub dataset id the model was trained on (repeatable)")
    parser.add_argument("--base-model", default=None, help="Hub id of the model this one was trained from")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--training-data", default="", help="one paragraph on the training data")
    return parser


def run(args: argparse.Namespace) -> int:
    from cxrfm.model_cards import write_results_and_card

    folder = args.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder.")
    results_path = args.results or folder / "results.json"
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{results_path}: not valid JSON ({error}).") from None
        if not isinstance(results, dict):
            raise ValueError(f"{results_path}: expected a JSON object, got {type(results).__name__}.")
    elif args.results is not None:
        raise FileNotFoundError(f"{results_path}: no such results file.")
    else:
        results = {}
    write_results_and_card(folder, args.family or family_of(folder), results, model_id=args.model_id,
                           datasets=args.datasets, base_model=args.base_model, license=args.license,
                           training_data=args.training_data)
    print(folder / "README.md")
    return 0
