"""`cxrfm app --glori FOLDER [--clip FOLDER] [--host H] [--port P]`: the browser app (Gradio) for one CXR at a time.

Serves until interrupted (Ctrl-C). Research use only: not a medical device.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "app", help="browser app: upload a CXR, see GLoRI probabilities, attention overlays and zero-shot scores",
        description=(
            "Serve a browser app (Gradio). Upload a chest X-ray (DICOM, 8/16-bit PNG, JPEG; read at full precision) "
            "to see each finding's GLoRI probability with its attention overlay and, with --clip, zero-shot "
            "probabilities for findings you type. Research use only: not a medical device."
        ),
    )
    parser.add_argument("--glori", type=Path, required=True,
                        help="GLoRIForMultiLabel folder with its preprocessor_config.json")
    parser.add_argument("--clip", type=Path, default=None,
                        help="RelaxedCLIPModel folder with a CXRCLIPProcessor (enables zero-shot findings)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return parser


def run(args: argparse.Namespace) -> int:
    from cxrfm.app import launch

    launch(args.glori, args.clip, host=args.host, port=args.port, block=True)
    return 0
