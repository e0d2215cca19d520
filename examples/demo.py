"""The whole cxrfm story on synthetic CXRs, on a CPU: phantom files -> tiny CheXFound (pretrained when the recipe is
installed, else a labelled random backbone) -> GLoRI trained on the saved and reloaded backbone folder -> evaluation
with bootstrap CIs -> CLI predict/evaluate with ROC curves and attention overlays -> tiny relaxed CLIP zero-shot ->
model cards and Hub-ready folders checked against the family contract -> summary table.

    make demo            # or: .venv/bin/python examples/demo.py [--output-dir cxrfm-demo] [--quick] [--overwrite]

The steps live in `cxrfm/commands/demo.py`, so the installed `cxrfm demo` runs the same story.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> dict:
    from cxrfm.commands.demo import run_demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("cxrfm-demo"))
    parser.add_argument("--quick", action="store_true", help="fewer images, epochs and resamples (for tests)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)
    return run_demo(args.output_dir, quick=args.quick, overwrite=args.overwrite)


if __name__ == "__main__":
    main(sys.argv[1:])
