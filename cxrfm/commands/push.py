"""`cxrfm push FOLDER REPO_ID [--dry-run]`: check a saved folder against its family contract and upload it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push", help="check a saved folder and upload it to the Hugging Face Hub",
        description="Check FOLDER (config, card README.md, results.json, family contract) and upload it to the model "
        "repo REPO_ID in one commit (HfApi.upload_folder; endpoint from HF_ENDPOINT, token from HF_TOKEN or "
        "`hf auth login`). A folder that fails a check is refused with the reasons (exit 2).",
    )
    parser.add_argument("folder", type=Path, help="a save_pretrained folder with README.md and results.json")
    parser.add_argument("repo_id", help="model repo id, e.g. my-org/chexfound-glori")
    parser.add_argument("--dry-run", action="store_true", help="check and list the files that would go up; no upload")
    parser.add_argument("--private", action="store_true", help="create the repo as private if it does not exist")
    parser.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--commit-message", default=None)
    return parser


def run(args: argparse.Namespace) -> int:
    from cxrfm.hub import push

    result = push(args.folder, args.repo_id, private=args.private or None, revision=args.revision,
                  commit_message=args.commit_message, dry_run=args.dry_run)
    # stdout: one file per line (dry run) or the commit URL, so the output pipes cleanly.
    if args.dry_run:
        print("\n".join(result.files))
    else:
        print(result.commit_url)
    return 0
