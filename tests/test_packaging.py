"""The wheel carries every subpackage from the mapped top-level folders, and imports from it."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Files that must travel in the wheel: one per mapped folder, plus data files read at run time.
REQUIRED_IN_WHEEL = [
    "cxrfm/__init__.py",
    "cxrfm/cli.py",
    "cxrfm/evaluation/__init__.py",
    "cxrfm/modeling/__init__.py",
    "cxrfm/modeling/chexfound/configuration_chexfound.py",
    "cxrfm/modeling/chexfound/modeling_chexfound.py",
    "cxrfm/processing/__init__.py",
    "cxrfm/processing/image_processing_cxr.py",
    "cxrfm/processing/datasets/__init__.py",
    "cxrfm/training/__init__.py",
    # data files read at run time
    "cxrfm/training/configs/glori_tiny.yaml",
    "cxrfm/training/configs/finetune_clip_tiny.yaml",
    "cxrfm/training/configs/accelerate/fsdp2.yaml",
    "cxrfm/model_cards/cxrfm_model_card.md",
    "cxrfm/evaluation/multilabel_auroc/multilabel_auroc.py",
]


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("cxrfm-*.whl")
    return wheel


def test_wheel_contains_every_subpackage(wheel_path):
    names = set(zipfile.ZipFile(wheel_path).namelist())
    missing = [f for f in REQUIRED_IN_WHEEL if f not in names]
    assert not missing, f"wheel lacks {missing}"
    # Every .py file under the mapped source folders is shipped (nothing forgotten in setup.cfg).
    for folder, prefix in [("cxrfm", "cxrfm"), ("modeling", "cxrfm/modeling"),
                           ("processing", "cxrfm/processing"), ("training", "cxrfm/training")]:
        for src in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in src.parts:
                continue
            rel = f"{prefix}/{src.relative_to(ROOT / folder).as_posix()}"
            assert rel in names, f"{rel} is not in the wheel: add its package to setup.cfg"
    # Tests, benchmarks and examples are not installed as packages.
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)


def test_wheel_imports_without_the_source_tree(wheel_path, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel_path)],
        check=True,
        capture_output=True,
    )
    code = (
        "import cxrfm, cxrfm.modeling, cxrfm.processing, cxrfm.training, cxrfm.evaluation;"
        "import cxrfm.processing.datasets;"
        "print(cxrfm.__file__); print(cxrfm.modeling.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=env, cwd=tmp_path).stdout.splitlines()
    # PYTHONPATH comes before the editable finder, so the wheel's copy is the one imported.
    assert all(line.startswith(str(target)) for line in out), out
