"""The shipped Accelerate configs really run the recipe skeleton on 2 CPU processes: DDP (multi_gpu.yaml), DeepSpeed
ZeRO-2 and ZeRO-3, FSDP2. Each launch (`accelerate launch --config_file <shipped> --num_processes 2
--mixed_precision no`, this file as the script) trains a tiny model through `TrainingLoop` with the same GLOBAL
batch as a 1-process run in the test process; the per-step losses, the gathered evaluation and the final weights
must equal the 1-process run's. CPU workarounds (../shared/reference/environment.md §2-3): gloo via
`build_accelerator`, ACCELERATE_USE_CPU for DDP, DS_ACCELERATOR=cpu and DeepSpeed's shm-comm JIT build skipped.
A real recipe, `train_glori` (tiny random backbone, cached features, phantom set), is launched the same way under
DDP, ZeRO-2 and ZeRO-3 and compared with its 1-process run: per-step losses of both stages and the gathered
validation/test metrics.
"""

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs" / "accelerate"
STEPS, GLOBAL_BATCH = 4, 8


def toy_run(output_dir: str) -> dict:
    """A 2-layer regression net, global batch 8, 4 AdamW steps with warm-up and clipping (as the DeepSpeed configs'
    gradient_clipping: 3.0), a checkpoint at step 2, and an evaluation over 11 rows (uneven across 2 processes)."""
    from accelerate.utils import set_seed

    from cxrfm.training.recipe import (
        Objective,
        TrainingArguments,
        TrainingLoop,
        build_accelerator,
        per_process_batch_size,
    )

    class Regression(Objective):
        def compute_loss(self, model, batch):
            inputs, targets = batch
            prediction = model(inputs)
            return {"mse": ((prediction - targets) ** 2).mean(), "scale": 0.01 * prediction.pow(2).mean()}

    args = TrainingArguments(output_dir=output_dir, batch_size=GLOBAL_BATCH, max_steps=STEPS, learning_rate=0.05,
                             logging_steps=2, checkpointing_steps=2, max_grad_norm=3.0, resume=False)
    accelerator = build_accelerator(args)
    set_seed(0)
    inputs = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    targets = torch.tanh(inputs @ torch.randn(6, 2, generator=torch.Generator().manual_seed(2)))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=per_process_batch_size(args, accelerator),
                        shuffle=True, drop_last=True)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 2))
    probe = torch.randn(11, 6, generator=torch.Generator().manual_seed(3))

    def evaluate(loop, epoch):
        outputs = loop.predict(DataLoader(TensorDataset(probe), batch_size=3), lambda m, batch: m(batch[0]))
        return {"rows": len(outputs), "outputs": outputs.tolist()}

    loop = TrainingLoop(accelerator, args, model, optimizer, loader, Regression(), scheduler, evaluate=evaluate)
    summary = loop.run()
    state = accelerator.get_state_dict(loop.model)  # collective under ZeRO-3 / FSDP
    return {
        "distributed_type": str(accelerator.distributed_type), "num_processes": accelerator.num_processes,
        "history": summary["history"], "evaluations": summary["evaluations"],
        "weights": {name: value.tolist() for name, value in (state or {}).items()},
        "checkpoints": sorted(p.name for p in loop.checkpoint_root.iterdir()) if accelerator.is_main_process else [],
        "is_main": accelerator.is_main_process,
    }


def glori_run(output_dir: str) -> dict:
    """train_glori's tiny config (random tiny backbone, cached features, phantom set of 80 images) at global batch 16:
    a 2-rate grid for 3 steps, then the best head warm-started on train + validation for 3 steps. Dropout is 0 (each
    process would draw its own masks) and gradients are clipped at 3.0 as the DeepSpeed configs' gradient_clipping."""
    from accelerate.state import PartialState

    from cxrfm.training.train_glori import main

    results = main(["--config", str(ROOT / "training" / "configs" / "glori_tiny.yaml"), "--output_dir", output_dir,
                    "--phantom_num_images", "80", "--batch_size", "16", "--learning_rates", "1e-3", "1e-2",
                    "--max_steps", "3", "--dropout", "0", "--max_grad_norm", "3.0", "--n_bootstrap", "0"])
    state = PartialState()
    return {"num_processes": state.num_processes, "history": results["history"], "selection": results["selection"],
            "test_auroc": results["test"]["macro"]["auroc"], "is_main": state.is_main_process}


def clip_run(output_dir: str) -> dict:
    """finetune_clip's tiny config (tiny ViT + 1-layer BERT, CLIP loss with negatives gathered across processes,
    sentence sampling and weak augmentation drawn from per-process generators), 60 phantom images at global batch
    8 for one epoch of 6 steps, gradients clipped at 3.0 as the DeepSpeed configs, the epoch's folder exported."""
    from accelerate.state import PartialState

    from cxrfm.training.finetune_clip import parse_args, train

    summary = train(parse_args([
        "--config", str(ROOT / "training" / "configs" / "finetune_clip_tiny.yaml"), "--output_dir", output_dir,
        "--phantom_num_images", "60", "--batch_size", "8", "--num_epochs", "1", "--max_grad_norm", "3.0",
        "--checkpointing_steps", "3", "--validation_labels", "Support Devices", "Pleural Effusion",
    ]))
    state = PartialState()
    return {"num_processes": state.num_processes, "history": summary["history"],
            "validation_auroc": summary["validation_auroc"], "folder": summary["checkpoints"][0][0],
            "is_main": state.is_main_process}


RUNS = {"toy": toy_run, "glori": glori_run, "clip": clip_run}

if __name__ == "__main__":
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        import deepspeed.ops

        # Skip the ~90 s first-run JIT build of DeepSpeed's shared-memory collectives; gloo carries them on CPU.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    result = RUNS[sys.argv[1]](sys.argv[2])
    if result.pop("is_main"):
        Path(sys.argv[3]).write_text(json.dumps(result))
    sys.exit(0)

import pytest  # noqa: E402  (not needed by the launched script above)

ENGINES = {
    # name: (shipped config, extra environment, expected distributed type)
    "ddp": ("multi_gpu.yaml", {"ACCELERATE_USE_CPU": "true"}, "DistributedType.MULTI_CPU"),
    "zero2": ("deepspeed_zero2.yaml", {}, "DistributedType.DEEPSPEED"),
    "zero3": ("deepspeed_zero3.yaml", {}, "DistributedType.DEEPSPEED"),
    "fsdp2": ("fsdp2.yaml", {}, None),  # refused on CPU: accelerate applies FSDP to GPU process groups only
}
GLORI_ENGINES = ("ddp", "zero2", "zero3")


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """All launches at once (their start-up is mostly imports), then the 1-process reference in this process."""
    root = tmp_path_factory.mktemp("engines")
    started, running = time.perf_counter(), {}
    launches = [(run, engine) for run in RUNS for engine in ENGINES if run == "toy" or engine in GLORI_ENGINES]
    # finetune_clip draws sentences and augmentations from per-process generators: its reference is the DDP launch
    for run, engine in launches:
        config, extra_env, _ = ENGINES[engine]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra_env}
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                   "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
                   __file__, run, str(root / f"{run}_{engine}"), str(root / f"{run}_{engine}.json")]
        running[run, engine] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                text=True)
    reference = {run: RUNS[run](str(root / f"{run}_one")) for run in RUNS if run != "clip"}
    results = {}
    for (run, engine), process in running.items():
        _, stderr = process.communicate(timeout=300)
        result_file = root / f"{run}_{engine}.json"
        results[run, engine] = (process.returncode, stderr,
                                json.loads(result_file.read_text()) if result_file.exists() else None)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{len(launches)} launches in parallel: {time.perf_counter() - started:.1f} s wall, "
          f"{cpu.ru_utime + cpu.ru_stime:.1f} s CPU in the launched processes")
    return reference, results


@pytest.mark.multiprocess
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_two_processes_equal_one(engine, launches):
    single_process, results = launches[0]["toy"], launches[1]
    returncode, stderr, result = results["toy", engine]
    assert returncode == 0, stderr[-4000:]
    assert (result["distributed_type"], result["num_processes"]) == (ENGINES[engine][2], 2)
    assert [r["step"] for r in result["history"]] == list(range(1, STEPS + 1))
    deviation = max(abs(two[name] - one[name]) / abs(one[name])
                    for two, one in zip(result["history"], single_process["history"]) for name in ("mse", "scale"))
    print(f"{engine}: largest relative loss difference to 1 process over {STEPS} steps: {deviation:.1e}")
    for two, one in zip(result["history"], single_process["history"]):
        for name in ("loss", "mse", "scale"):
            assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-7), (engine, two["step"], name)
    assert single_process["history"][-1]["mse"] < single_process["history"][0]["mse"]  # the steps did something
    (evaluation,) = result["evaluations"]
    assert evaluation["rows"] == 11  # gather_for_metrics dropped the duplicated padding rows
    torch.testing.assert_close(torch.tensor(evaluation["outputs"]),
                               torch.tensor(single_process["evaluations"][0]["outputs"]), rtol=1e-5, atol=1e-6)
    assert set(result["weights"]) == set(single_process["weights"])
    for name, value in result["weights"].items():
        torch.testing.assert_close(torch.tensor(value), torch.tensor(single_process["weights"][name]),
                                   rtol=1e-5, atol=1e-6)
    assert result["checkpoints"] == ["checkpoint_0", "checkpoint_1"]  # save_state at steps 2 and 4


@pytest.mark.multiprocess
def test_fsdp2_config_on_cpu_is_refused_not_run_unsynchronised(launches):
    """accelerate 1.15 turns the FSDP config on a GPU-less machine into 2 independent DistributedType.NO processes
    (measured: no gradient sync, both ranks writing checkpoint_0); build_accelerator stops that launch."""
    returncode, stderr, result = launches[1]["toy", "fsdp2"]
    assert returncode != 0 and result is None
    assert "processes were launched but Accelerate runs them unsynchronised" in stderr


@pytest.mark.multiprocess
@pytest.mark.parametrize("engine", GLORI_ENGINES)
def test_glori_recipe_on_two_processes_equals_one(engine, launches):
    """train_glori's BCE is summed over the images of a process (as the official code), and the processes' losses
    are averaged: with the same global batch a 2-process step logs half the 1-process loss, and the gradient is half
    the 1-process one. AdamW's step does not change (up to eps) when every gradient is scaled by the same factor, so
    twice every logged 2-process loss, and the gathered validation/test metrics, must equal the 1-process run's."""
    single_process, results = launches[0]["glori"], launches[1]
    returncode, stderr, result = results["glori", engine]
    assert returncode == 0, stderr[-4000:]
    assert result["num_processes"] == 2 and single_process["num_processes"] == 1
    deviation = 0.0
    for stage in ("stage1", "stage2"):  # stage 2 warm-starts from the head gathered out of stage 1 (ZeRO-3: sharded)
        assert [r["step"] for r in result["history"][stage]] == [1, 2, 3]
        for two, one in zip(result["history"][stage], single_process["history"][stage]):
            deviation = max(deviation, abs(2 * two["bce"] - one["bce"]) / one["bce"])
            assert 2 * two["bce"] == pytest.approx(one["bce"], rel=1e-5), (engine, stage, two["step"])
    print(f"glori {engine}: largest relative difference of 2 x the 2-process loss to 1 process: {deviation:.1e}")
    assert single_process["history"]["stage1"][-1]["bce"] < 0.8 * single_process["history"]["stage1"][0]["bce"]
    assert result["selection"]["best_learning_rate"] == single_process["selection"]["best_learning_rate"]
    for rate, auroc in single_process["selection"]["per_learning_rate"].items():
        assert result["selection"]["per_learning_rate"][rate] == pytest.approx(auroc, abs=1e-6)
    assert result["test_auroc"] == pytest.approx(single_process["test_auroc"], abs=1e-6)


@pytest.mark.multiprocess
@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_clip_recipe_under_deepspeed_equals_ddp(engine, launches):
    """finetune_clip under DeepSpeed: RelaxedCLIP's 0-d logit_scale, which DeepSpeed cannot broadcast, runs as a
    (1,) tensor and is saved 0-d again; ZeRO-3 builds the towers whole (zero3_init would hand RelaxedCLIP's weight
    init empty shards) and gathers logit_scale inside forward, where the temperature is read. Per-step losses equal
    the DDP launch's (same processes, same per-process data and draws) and the exported folder loads into the plain
    model with the same weights."""
    from cxrfm.modeling import RelaxedCLIPModel

    results = launches[1]
    (ddp_code, ddp_err, ddp), (returncode, stderr, result) = results["clip", "ddp"], results["clip", engine]
    assert ddp_code == 0, ddp_err[-4000:]
    assert returncode == 0, stderr[-4000:]
    assert result["num_processes"] == ddp["num_processes"] == 2
    assert [r["step"] for r in result["history"]] == [r["step"] for r in ddp["history"]] == list(range(1, 7))
    for record, reference in zip(result["history"], ddp["history"]):
        assert record["clip_loss"] == pytest.approx(reference["clip_loss"], rel=1e-5), (engine, record["step"])
    exported = RelaxedCLIPModel.from_pretrained(result["folder"])
    reference_model = RelaxedCLIPModel.from_pretrained(ddp["folder"])
    assert exported.logit_scale.dim() == 0
    reference_state = reference_model.state_dict()
    for name, value in exported.state_dict().items():
        if name.endswith("k_proj.bias"):  # softmax ignores it: its gradient is rounding noise, which AdamW scales up
            continue
        torch.testing.assert_close(value, reference_state[name], rtol=1e-4, atol=1e-6, msg=name)
