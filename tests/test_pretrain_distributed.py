"""2 CPU processes (gloo, DDP) give the same first losses and teacher EMA weights as 1 process with the same
global batch: Sinkhorn sums and masked-patch counts are reduced across processes, masks are drawn for the global
batch and KoLeo runs over fixed-size groups.

Two optimizer steps at the full learning rate (no warm-up) are compared. Further steps drift apart by ~1e-5: AdamW
divides by sqrt(v), so parameters whose gradients are at float-noise level get full-size updates whose sign depends
on the summation order of DDP's gradient average."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config", "training/configs/pretrain_chexfound_tiny.yaml", "--phantom_num_images", "80", "--batch_size", "8",
        "--koleo_group_size", "4", "--drop_path_rate", "0.0", "--epoch_length", "4", "--max_steps", "2", "--warmup_epochs", "0",
        "--logging_steps", "1", "--export", "false"]


def run_and_save(output_dir: str) -> None:
    from cxrfm.training.pretrain_chexfound import main

    torch.set_num_threads(1)
    summary = main([*ARGS, "--output_dir", output_dir])
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"history": summary["history"], "teacher": summary["teacher"].state_dict()},
                   Path(output_dir) / "result.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(Path(__file__)), str(tmp_path / "two")]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = torch.load(tmp_path / "two" / "result.pt", weights_only=True)

    run_and_save(str(tmp_path / "one"))
    one = torch.load(tmp_path / "one" / "result.pt", weights_only=True)
    assert [h["step"] for h in two["history"]] == [1, 2]
    for got, want in zip(two["history"], one["history"]):
        for term in ("dino_global", "dino_local", "ibot"):
            assert got[term] == pytest.approx(want[term], rel=1e-5, abs=1e-6), (got["step"], term)
        # KoLeo is -log of nearest-neighbour distances; the tiny model's [CLS] features start as near-duplicates
        # (distances ~1e-4), which turns float-order differences of DDP's gradient average (~1e-7) into ~1e-4.
        assert got["koleo"] == pytest.approx(want["koleo"], rel=1e-3), got["step"]
    assert one["history"][0]["ibot"] > 0  # masked patches were there to count
    for name, want in one["teacher"].items():
        torch.testing.assert_close(two["teacher"][name], want, rtol=1e-5, atol=1e-6, msg=name)
    # the teacher moved away from its initial copy of the student, so the comparison is not between two inits
    from accelerate.utils import set_seed

    from cxrfm.training.pretrain_chexfound import PretrainArguments, build_student
    from cxrfm.training.recipe import parse_args

    set_seed(0)
    initial = build_student(parse_args(PretrainArguments, [*ARGS, "--output_dir", "unused"])).state_dict()
    assert not torch.allclose(one["teacher"]["backbone.vit.blocks.0.attn.qkv.weight"],
                              initial["backbone.vit.blocks.0.attn.qkv.weight"])

if __name__ == "__main__":  # one torchrun worker
    sys.path.insert(0, str(ROOT))
    run_and_save(sys.argv[1])
