"""`cxrfm evaluate PREDICTIONS.csv LABELS.csv -o metrics.json [--roc-dir DIR]`: AUROC/AUPRC with bootstrap CIs.

Rows are matched on the id column (default `file`; by file name when the full paths differ); findings are the
columns the two CSVs share (or `--findings`). Labels are 1/0; empty, NaN or -1 means "not labelled" and is left
out for that finding. Writes a JSON (`{SPLIT: multilabel_metrics result, ...}`, readable by `cxrfm card
--results`), prints a Markdown table with the CIs on stdout, and with `--roc-dir` saves one ROC PNG per finding.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="predictions CSV + labels CSV -> metrics JSON with CIs, Markdown table, ROC PNGs",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("predictions", type=Path, help="CSV from `cxrfm predict` or `cxrfm zero-shot`")
    parser.add_argument("labels", type=Path, help="CSV with the id column and one 1/0 column per finding")
    parser.add_argument("-o", "--output", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--id-column", default="file", help="column matching rows of the two CSVs (default: file)")
    parser.add_argument("--findings", default=None, help="comma-separated findings (default: all shared columns)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--ci", type=float, default=0.95, help="confidence level")
    parser.add_argument("--split-name", default="test", help="name of this evaluation in the JSON and the card")
    parser.add_argument("--dataset", default=None, help="dataset name recorded in the JSON (shown on the card)")
    parser.add_argument("--roc-dir", type=Path, default=None, help="folder for one ROC-curve PNG per finding")
    return parser


def _read_csv(path: Path, id_column: str):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CSV ({error}).") from None
    if id_column not in frame.columns:
        raise ValueError(f"{path}: no id column {id_column!r}; columns are {list(frame.columns)}. Use --id-column.")
    duplicated = frame[id_column][frame[id_column].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path}: {len(duplicated)} repeated {id_column!r} values, e.g. {duplicated[:3]}.")
    return frame


def match_rows(predictions, labels, id_column: str, names: tuple[str, str]):
    """Inner join on the id column; by file name if no full id matches. ValueError when nothing matches."""
    merged = predictions.merge(labels, on=id_column, suffixes=("", "__label"))
    if len(merged) == 0:
        base = lambda frame: frame.assign(**{id_column: frame[id_column].map(lambda v: Path(str(v)).name)})  # noqa: E731
        merged = base(predictions).merge(base(labels), on=id_column, suffixes=("", "__label"))
    if len(merged) == 0:
        raise ValueError(f"no {id_column!r} value of {names[0]} is in {names[1]} (e.g. "
                         f"{predictions[id_column].iloc[0]!r} vs {labels[id_column].iloc[0]!r}).")
    unmatched = len(predictions) - len(merged)
    if unmatched:
        logger.warning("%d of %d predictions have no label row in %s; evaluated on %d images.", unmatched,
                       len(predictions), names[1], len(merged))
    return merged


def run(args: argparse.Namespace) -> int:
    from cxrfm.evaluation import multilabel_metrics
    from cxrfm.model_cards import evaluation_protocol, metrics_table

    predictions = _read_csv(args.predictions, args.id_column)
    labels = _read_csv(args.labels, args.id_column)
    shared = [c for c in predictions.columns if c != args.id_column and c in labels.columns]
    findings = [f.strip() for f in args.findings.split(",")] if args.findings else shared
    for source, frame in ((args.predictions, predictions), (args.labels, labels)):
        missing = [f for f in findings if f not in frame.columns]
        if missing:
            raise ValueError(f"{source}: no column for finding(s) {missing}; its columns are {list(frame.columns)}.")
    if not findings:
        raise ValueError(f"{args.predictions} and {args.labels} share no finding column besides {args.id_column!r}.")
    merged = match_rows(predictions, labels, args.id_column, (str(args.predictions), str(args.labels)))
    label_columns = [f"{f}__label" for f in findings]
    try:
        scores = merged[findings].to_numpy(dtype=np.float64)
        truth = merged[label_columns].apply(lambda c: c.replace(-1, np.nan)).to_numpy(dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{args.predictions} / {args.labels}: non-numeric values in finding columns ({error}).") \
            from None
    bad = ~np.isnan(truth) & ~np.isin(truth, (0.0, 1.0))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(f"{args.labels}: label {truth[row, column]:g} for {findings[column]!r} of "
                         f"{merged[args.id_column].iloc[row]!r}; labels must be 1, 0, -1 or empty.")
    metrics = multilabel_metrics(truth, scores, findings, n_bootstrap=args.n_bootstrap, seed=args.seed, ci=args.ci)
    result = {args.split_name: metrics, "predictions_file": str(args.predictions), "labels_file": str(args.labels),
              "num_images": int(len(merged))}
    if args.dataset:
        result["dataset"] = args.dataset
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    if args.roc_dir is not None:
        from cxrfm.visualization import save_roc_curves

        written = save_roc_curves(truth, scores, findings, args.roc_dir, metrics)
        logger.info("Saved %d ROC curves to %s", len(written), args.roc_dir)
    sys.stdout.write(f"{evaluation_protocol(metrics)}\n\n{metrics_table(metrics)}\n")
    return 0
