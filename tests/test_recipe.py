"""The recipe skeleton: argument parsing errors, checkpoint naming and rotation, exact resume (model, optimizer,
scheduler, dropout RNG, collator generators, objective state), hooks, named loss terms, evaluation."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_cosine_schedule_with_warmup

from cxrfm.training.recipe import (
    BatchGenerators,
    Objective,
    TrainingArguments,
    TrainingLoop,
    build_accelerator,
    check_synchronised,
    parse_args,
    per_process_batch_size,
)


@dataclass(kw_only=True)
class ToyArguments(TrainingArguments):
    noise: float = 0.1
    widths: list[int] = field(default_factory=lambda: [8])
    task: str


def test_yaml_then_cli_overrides(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text("output_dir: out\ntask: regress\nnoise: 0.5\nwidths: [4, 2]\nresume: false\n")
    args = parse_args(ToyArguments, ["--config", str(config), "--noise", "0.25", "--max_steps", "7"])
    assert (args.output_dir, args.task, args.noise, args.widths, args.max_steps, args.resume) == (
        "out", "regress", 0.25, [4, 2], 7, False)
    assert parse_args(ToyArguments, ["--config", str(config), "--resume", "true"]).resume is True


@pytest.mark.parametrize("yaml_text, argv, message", [
    ("output_dir: o\ntask: t\nnoize: 1\n", [], r"toy.yaml: unknown keys \['noize'\]"),
    ("output_dir: o\n", [], r"required \['task'\] not set"),
    ("task: t\n", [], r"required \['output_dir'\] not set"),
    ("output_dir: o\ntask: t\n", ["--nosie", "1"], r"unknown command-line arguments \['--nosie', '1'\]"),
    ("output_dir: o\ntask: t\n", ["--seed", "one"], "invalid int value: 'one'"),
    ("output_dir: o\ntask: t\nbatch_size: 0\n", [], "batch_size, gradient_accumulation_steps"),
    ("output_dir: o\ntask: t\nmixed_precision: fp8\n", [], "mixed_precision must be"),
])
def test_bad_arguments_raise_value_error(tmp_path, yaml_text, argv, message):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        parse_args(ToyArguments, ["--config", str(config), *argv])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        parse_args(ToyArguments, ["--config", str(tmp_path / "nothere.yaml")])


class NoisyRegression(Objective):
    """Two named terms; the collator's noise comes from checkpointed generators; a step counter as extra state
    (the way an EMA teacher or a memory bank would be carried)."""

    def __init__(self):
        self.hook_calls, self.steps_seen = [], 0

    def compute_loss(self, model, batch):
        inputs, targets = batch
        prediction = model(inputs)
        return {"mse": ((prediction - targets) ** 2).mean(), "l1": 0.1 * (prediction - targets).abs().mean()}

    def on_train_start(self, loop):
        self.hook_calls.append(("train_start", loop.step))

    def on_epoch_start(self, loop, epoch):
        self.hook_calls.append(("epoch_start", epoch))

    def on_step_end(self, loop, step):
        self.steps_seen += 1
        if step == getattr(self, "crash_at", None):
            raise KeyboardInterrupt(f"simulated kill at step {step}")

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]


def run_toy(output_dir, max_steps=None, crash_at=None, accumulation=1, num_epochs=3, resume=True):
    args = ToyArguments(output_dir=str(output_dir), task="regress", batch_size=8, num_epochs=num_epochs, resume=resume,
                        max_steps=max_steps, gradient_accumulation_steps=accumulation, learning_rate=0.05,
                        logging_steps=3, checkpointing_steps=2, checkpoints_total_limit=2, warmup_steps=2)
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    inputs = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(inputs, inputs @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [1.5]]))
    generators = BatchGenerators(noise=torch.Generator().manual_seed(3), numpy=np.random.default_rng(4))

    def collate(rows):
        generators.before_batch()
        inputs = torch.stack([row[0] for row in rows])
        scale = float(generators["numpy"].uniform(0.5, 1.5))
        return inputs + 0.1 * scale * torch.randn(inputs.shape, generator=generators["noise"]), torch.stack([r[1] for r in rows])

    loader = DataLoader(data, batch_size=per_process_batch_size(args, accelerator), shuffle=True, collate_fn=collate)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    total = max_steps or num_epochs * len(loader) // accumulation
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, total)
    objective = NoisyRegression()
    objective.crash_at = crash_at
    loop = TrainingLoop(accelerator, args, model, optimizer, loader, objective, scheduler, generators=generators)
    try:
        summary = loop.run()
    except KeyboardInterrupt:
        summary = None
    return summary, objective, loop


@pytest.mark.parametrize("accumulation, crash, latest", [(1, 8, 6), (2, 8, 6)])
def test_interrupted_run_resumes_to_the_same_losses(tmp_path, accumulation, crash, latest):
    """Killed in the second epoch, resumed from the checkpoint in the middle of it (saved every 2 steps)."""
    full, full_objective, loop = run_toy(tmp_path / "full", accumulation=accumulation)
    total = 3 * loop.steps_per_epoch  # 40 rows, global batch 8: 5 batches of 8, or 10 of 4 with accumulation 2
    assert loop.steps_per_epoch == 5 and len(loop.train_dataloader) == 5 * accumulation
    assert [r["step"] for r in full["history"]] == list(range(1, total + 1))
    assert all(set(r) == {"step", "loss", "mse", "l1"} for r in full["history"])
    assert full["history"][0]["loss"] == pytest.approx(full["history"][0]["mse"] + full["history"][0]["l1"])
    mse = [r["mse"] for r in full["history"]]
    assert np.mean(mse[-5:]) < np.mean(mse[:5])
    assert run_toy(tmp_path / "cut", crash_at=crash, accumulation=accumulation)[0] is None
    resumed, objective, loop = run_toy(tmp_path / "cut", accumulation=accumulation)
    assert resumed["resumed_from"].endswith(f"checkpoint_{latest // 2 - 1}")
    assert loop.steps_per_epoch < latest < 2 * loop.steps_per_epoch  # a mid-epoch resume
    assert [r["step"] for r in resumed["history"]] == list(range(latest + 1, total + 1))
    expected = {r["step"]: r for r in full["history"]}
    for record in resumed["history"]:  # exactly the uninterrupted run's values
        assert record == expected[record["step"]], record["step"]
    assert objective.steps_seen == full_objective.steps_seen == total  # objective state restored
    # train_start before loading; no epoch_start for the epoch the resume continued
    assert objective.hook_calls == [("train_start", 0), ("epoch_start", 2)]
    # automatic naming continued after the loaded folder; the total limit keeps the newest two
    assert len(list(loop.checkpoint_root.iterdir())) == 2


def test_a_finished_run_resumes_to_its_end_without_training(tmp_path):
    first, _, _ = run_toy(tmp_path / "run", max_steps=3)
    assert first["step"] == 3 and [r["step"] for r in first["history"]] == [1, 2, 3]
    again, objective, _ = run_toy(tmp_path / "run", max_steps=3)  # the final state was saved at step 3
    assert again["step"] == 3 and again["history"] == [] and again["resumed_from"].endswith("checkpoint_1")
    assert objective.steps_seen == 3


def test_resume_false_in_a_used_output_dir_starts_fresh_and_numbers_after_the_old_checkpoints(tmp_path):
    first, _, _ = run_toy(tmp_path / "run", max_steps=3)  # checkpoint_0 (step 2), checkpoint_1 (final, step 3)
    fresh, objective, loop = run_toy(tmp_path / "run", max_steps=3, resume=False)
    assert fresh["resumed_from"] is None and objective.steps_seen == 3
    assert fresh["history"] == first["history"]  # from step 0 with the same seed: the same run again
    # accelerate refuses to overwrite checkpoint_0/1: the new ones follow them and rotate the old ones out
    assert sorted(p.name for p in loop.checkpoint_root.iterdir()) == ["checkpoint_2", "checkpoint_3"]
    again, _, _ = run_toy(tmp_path / "run", max_steps=3)
    assert again["resumed_from"].endswith("checkpoint_3") and again["history"] == []


def test_evaluation_runs_on_the_prepared_model_and_is_gathered(tmp_path):
    args = ToyArguments(output_dir=str(tmp_path), task="t", batch_size=4, num_epochs=2)
    accelerator = build_accelerator(args)
    model = nn.Linear(3, 2)
    data = TensorDataset(torch.randn(12, 3), torch.zeros(12, 1))
    inputs = torch.randn(7, 3)

    def forward(prepared, batch):
        assert prepared is loop.model and not prepared.training  # the prepared model, in eval mode
        return prepared(batch[0])

    def evaluate(loop, epoch):
        out = loop.predict(DataLoader(TensorDataset(inputs), batch_size=3), forward)
        torch.testing.assert_close(out, model(inputs).detach())  # all 7 rows, in order
        return {"rows": len(out)}

    class Zero(Objective):
        def compute_loss(self, model, batch):
            return {"loss": model(batch[0]).pow(2).mean()}

    loop = TrainingLoop(accelerator, args, model, torch.optim.SGD(model.parameters(), lr=0.0),
                        DataLoader(data, batch_size=4), Zero(), evaluate=evaluate)
    loop.model.train()
    summary = loop.run()
    assert summary["evaluations"] == [{"epoch": 0, "step": 3, "rows": 7}, {"epoch": 1, "step": 6, "rows": 7}]
    with pytest.raises(TypeError, match="objective must be an Objective"):
        TrainingLoop(accelerator, args, model, None, DataLoader(data), lambda m, b: {})
    with pytest.raises(ValueError, match="not divisible by processes x accumulation steps = 3"):
        per_process_batch_size(ToyArguments(output_dir="o", task="t", batch_size=8, gradient_accumulation_steps=3),
                               accelerator)


def test_unsynchronised_multi_process_launch_is_refused():
    """2 launched processes that Accelerate leaves as DistributedType.NO (FSDP config or torchrun on a CPU machine)
    would each train alone; build_accelerator refuses them."""
    with pytest.raises(RuntimeError, match="2 processes were launched but Accelerate runs them unsynchronised"):
        check_synchronised("DistributedType.NO", 2)
    check_synchronised("DistributedType.NO", 1)
    check_synchronised("DistributedType.MULTI_CPU", 2)
    check_synchronised("DistributedType.DEEPSPEED", 2)
