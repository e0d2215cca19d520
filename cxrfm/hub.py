"""Publishing a saved folder to the Hugging Face Hub, and resolving `--backbone`/`--model` arguments.

`push(folder, repo_id)` checks the folder against its family's contract (`cxrfm.contract.check_folder`) and
that it carries its card (`README.md`) and `results.json`, then uploads it with `HfApi.upload_folder` in one
commit. `dry_run=True` returns the file list without any network call. `resolve_model_path` turns a path
that does not exist into an error that says so, instead of huggingface_hub's "Repo id must use alphanumeric
chars" for `./no_such_model`.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Never uploaded: caches and training state that recipes leave next to the model files.
IGNORE_PATTERNS = (".git/*", "*/.git/*", "__pycache__/*", "*/__pycache__/*", "*.pyc", ".cache/*", "*/.cache/*",
                   "checkpoints/*", "feature_cache/*", ".ipynb_checkpoints/*", ".DS_Store")
REQUIRED_FILES = {
    "config.json": "save the model with save_pretrained(folder)",
    "README.md": "render the card with `cxrfm card FOLDER` or cxrfm.model_cards.write_results_and_card",
    "results.json": "write the evaluation results with cxrfm.model_cards.write_results_and_card",
}


@dataclass
class PushResult:
    """What `push` sent (or, on a dry run, would send): the repo, the files relative to the folder, the commit."""

    repo_id: str
    folder: Path
    files: list[str]
    commit_url: str | None = None
    commit_oid: str | None = None


def resolve_model_path(name_or_path: str | os.PathLike, what: str = "model") -> str:
    """Return `name_or_path` if it is an existing folder or looks like a Hub repo id ("org/name").

    A path-like argument that does not exist (`./no_such_model`, `/data/model`, `models/x/`) raises
    FileNotFoundError naming it; huggingface_hub would otherwise report "Repo id must use alphanumeric chars".
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{what} {text!r}: the folder has no config.json; is it a save_pretrained folder?")
        return str(path)
    if path.exists():
        raise ValueError(f"{what} {text!r}: is a file; expected a save_pretrained folder or a Hub repo id.")
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith("/") or text.count("/") > 1 or os.sep != "/" \
        and os.sep in text
    if looks_like_path or not text:
        raise FileNotFoundError(
            f"{what} {text!r}: no such folder (resolved to {path.resolve()}); pass an existing save_pretrained folder "
            "or a Hub repo id such as 'org/name'."
        )
    return text


def _contract_problems(folder: Path) -> list[str]:
    """The contract helper's `check_folder`: a raised error or returned problem list -> reasons; else none."""
    check_folder = importlib.import_module("cxrfm.contract").check_folder
    try:
        outcome = check_folder(folder)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        return [str(error)]
    if isinstance(outcome, str):
        return [outcome] if outcome else []
    if isinstance(outcome, (list, tuple)) and all(isinstance(item, str) for item in outcome):
        return list(outcome)
    return []


def files_to_upload(folder: str | Path) -> list[str]:
    """Relative POSIX paths of the files `push` uploads from `folder`, sorted (IGNORE_PATTERNS left out)."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(relative, pattern) for pattern in IGNORE_PATTERNS):
            files.append(relative)
    return files


def check_publishable(folder: str | Path) -> list[str]:
    """Reasons `folder` cannot be published (empty list = it can): missing files, then the family contract."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder.")
    problems = [f"{folder / name} is missing ({how})" for name, how in REQUIRED_FILES.items()
                if not (folder / name).is_file()]
    if (folder / "config.json").is_file():
        problems += _contract_problems(folder)
    return problems


def push(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> PushResult:
    """Check `folder` and upload it to the model repo `repo_id` (created if missing) in one commit.

    Raises ValueError listing every reason when the folder fails the checks; nothing is uploaded then.
    `dry_run=True` checks and returns the file list without contacting the Hub. The endpoint is
    huggingface_hub's (`HF_ENDPOINT`), the token `token` or the logged-in one.
    """
    folder = Path(folder)
    problems = check_publishable(folder)
    if problems:
        raise ValueError(f"{folder} cannot be pushed to {repo_id}:\n  - " + "\n  - ".join(problems))
    files = files_to_upload(folder)
    result = PushResult(repo_id=repo_id, folder=folder, files=files)
    if dry_run:
        return result

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
        commit_message=commit_message or f"Upload {folder.name} with cxrfm", ignore_patterns=list(IGNORE_PATTERNS),
    )
    result.commit_url, result.commit_oid = commit.commit_url, commit.oid
    logger.info("Pushed %d files from %s to %s (%s)", len(files), folder, repo_id, commit.commit_url)
    return result


__all__ = ["IGNORE_PATTERNS", "PushResult", "check_publishable", "files_to_upload", "push", "resolve_model_path"]
