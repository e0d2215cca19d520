"""The skeleton every training recipe is built on: arguments, the Accelerator, the step loop, checkpoints, resume.

A recipe subclasses `TrainingArguments`, reads it with `parse_args`, builds its model, optimizer and data, and hands
an `Objective` to `TrainingLoop`:

    args = parse_args(MyArguments)                       # --config file.yaml, then --key value overrides
    accelerator = build_accelerator(args)                # checkpoints in <output_dir>/checkpoints/checkpoint_<i>
    set_seed(args.seed)
    model, optimizer, loader = ...
    summary = TrainingLoop(accelerator, args, model, optimizer, loader, MyObjective(...), scheduler).run()

The loop prepares what it is given, steps the optimizer every `gradient_accumulation_steps` batches, calls the
objective's hooks, logs the named loss terms, saves the whole state every `checkpointing_steps` optimizer steps
(model, optimizer, scheduler, RNGs, the loop's counters, the objective's `state_dict()` and every registered extra
object) and, with `resume`, continues exactly where the latest checkpoint stopped: the epoch's shuffle order is
drawn again from (seed, epoch) and the batches already seen are skipped. With `resume=False` in an output_dir that
already has checkpoints, the run starts at step 0 and numbers its checkpoints after the existing ones (nothing is
deleted up front; `checkpoints_total_limit` rotates the old ones out), so a later resume continues this run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from argparse import ArgumentError
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator, PartialState, skip_first_batches
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    gather_object,
)
from transformers import HfArgumentParser

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainingArguments:
    """Settings every recipe shares. Recipes subclass it: `@dataclass(kw_only=True) class MyArguments(TrainingArguments)`."""

    output_dir: str = field(metadata={"help": "checkpoints/, logs and the exported model go here (required)"})
    seed: int = 0
    batch_size: int = field(default=32, metadata={"help": "GLOBAL batch per optimizer step (all processes, all accumulation)"})
    num_epochs: int = 1
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps; overrides num_epochs when set"})
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip the gradient norm (None: no clipping)"})
    logging_steps: int = 10
    checkpointing_steps: int | None = field(default=None, metadata={"help": "save_state every N optimizer steps (and at the end)"})
    checkpoints_total_limit: int | None = 2
    resume: bool = field(default=True, metadata={"help": "continue from the latest checkpoint in output_dir; false "
                                                 "starts from step 0 and numbers new checkpoints after existing ones"})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16 (fp32 on CPU: bf16 is ~100x slower)"})
    dataset: str = field(default="phantom", metadata={"help": "loader name or CSV file"})
    data_root: str | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or self.num_epochs < 1 or self.logging_steps < 1:
            raise ValueError("batch_size, gradient_accumulation_steps, num_epochs and logging_steps must be >= 1.")
        for name in ("max_steps", "checkpointing_steps", "checkpoints_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}.")


def parse_args(arguments_class: type, argv: list[str] | None = None):
    """`--config file.yaml` sets values, other `--key value` flags override them. Unknown YAML keys or flags, values
    of the wrong type and required fields left unset raise ValueError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    values, source = {}, "command line"
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 == len(argv):
            raise ValueError("--config needs a YAML file.")
        config_path = Path(argv[position + 1])
        del argv[position : position + 2]
        if not config_path.is_file():
            raise FileNotFoundError(f"config file {config_path} does not exist.")
        values = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{config_path}: expected a mapping of {arguments_class.__name__} fields.")
        source = str(config_path)
    known = {f.name for f in fields(arguments_class)}
    renamed = getattr(arguments_class, "renamed_fields", {})  # old name -> new name, refused with a pointer
    flags = [arg[2:].split("=")[0] for arg in argv if arg.startswith("--")]
    old = next((name for name in [*values, *flags] if name in renamed), None)
    if old is not None:
        raise ValueError(f"{source if old in values else 'command line'}: '{old}' was renamed to '{renamed[old]}'.")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; valid keys are the fields of {arguments_class.__name__}.")
    parser = HfArgumentParser(arguments_class, exit_on_error=False)
    for action in parser._actions:  # required fields are checked below, after the YAML values are merged
        action.required = False
    unset = object()  # default of every flag: tells which flags the command line gave
    parser.set_defaults(**{name: unset for name in known})
    try:
        namespace, rest = parser.parse_known_args(argv)
    except ArgumentError as error:
        raise ValueError(f"{arguments_class.__name__}: {error}") from None
    if rest:
        raise ValueError(f"unknown command-line arguments {rest}; valid flags are the fields of {arguments_class.__name__}.")
    merged = {**values, **{name: value for name, value in vars(namespace).items() if value is not unset}}
    missing = [f.name for f in fields(arguments_class)
               if f.name not in merged and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{arguments_class.__name__}: required {missing} not set (in the YAML file or as --<name>).")
    return arguments_class(**merged)


def build_accelerator(args: TrainingArguments, project_dir: str | None = None, **kwargs) -> Accelerator:
    """The recipe's Accelerator: checkpoints in `<project_dir or output_dir>/checkpoints/checkpoint_<i>` (automatic
    naming, the newest `checkpoints_total_limit` kept; a recipe with several stages gives each its project_dir),
    shuffling seeded by (seed, epoch) so a resumed epoch replays its order, and the gloo backend for a multi-process
    launch without CUDA (accelerate leaves DeepSpeed on CPU without one: environment.md §2)."""
    handlers = list(kwargs.pop("kwargs_handlers", []))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available() and world_size > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    project = ProjectConfiguration(project_dir=project_dir or args.output_dir, automatic_checkpoint_naming=True,
                                   total_limit=args.checkpoints_total_limit)
    # Schedules count optimizer steps of the GLOBAL batch: the loop steps the scheduler once per optimizer step
    # (accelerate would otherwise step it once per process, as if each process's batch were a step).
    accelerator = Accelerator(
        project_config=project, gradient_accumulation_steps=args.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False, mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), kwargs_handlers=handlers, **kwargs,
    )
    check_synchronised(str(accelerator.distributed_type), world_size)
    return accelerator


def check_synchronised(distributed_type: str, world_size: int) -> None:
    """Refuse a multi-process launch that Accelerate runs as independent single processes (no gradient sync, each
    rank training alone): what `torchrun`/`--multi_gpu` without ACCELERATE_USE_CPU and the FSDP configs give on a
    machine without GPUs (accelerate applies FSDP only to GPU-type process groups)."""
    if world_size > 1 and distributed_type.endswith("NO"):
        raise RuntimeError(
            f"{world_size} processes were launched but Accelerate runs them unsynchronised (DistributedType.NO). "
            "On CPU use the DDP config with ACCELERATE_USE_CPU=true or a DeepSpeed config with DS_ACCELERATOR=cpu; "
            "FSDP needs GPUs."
        )


def per_process_batch_size(args: TrainingArguments, accelerator: Accelerator) -> int:
    """The DataLoader batch size that makes `args.batch_size` the global batch of one optimizer step."""
    parts = accelerator.num_processes * args.gradient_accumulation_steps
    if args.batch_size % parts:
        raise ValueError(f"batch_size {args.batch_size} is not divisible by processes x accumulation steps = {parts}.")
    return args.batch_size // parts


class Objective:
    """What a recipe optimises. `compute_loss` returns named loss terms (the loop sums them); the hooks run on every
    process; `state_dict`/`load_state_dict` carry extra state (an EMA teacher, a memory bank, a clustering) in
    every checkpoint."""

    def compute_loss(self, model, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(model, batch).")

    def on_train_start(self, loop: "TrainingLoop") -> None:
        """After `prepare`, BEFORE a checkpoint is loaded: create the state `load_state_dict` will fill."""

    def on_epoch_start(self, loop: "TrainingLoop", epoch: int) -> None:
        """Before the first batch of an epoch; not again for the epoch a resume continues (its state is restored)."""

    def on_step_end(self, loop: "TrainingLoop", step: int) -> None:
        """After optimizer step `step` (1-based), before logging and checkpointing."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} got checkpoint state {sorted(state)} but defines no load_state_dict.")


class BatchGenerators:
    """The random generators a collator draws from, checkpointed exactly.

    The prepared DataLoader collates one batch ahead of the step that uses it, so the generators' state at save
    time already includes the next batch. The collator calls `before_batch()` before drawing; the loop calls
    `batch_consumed()` when it takes a batch; the saved state is the one before the first batch not yet consumed.
    States of every process are gathered (accelerate writes custom objects from the main process only) and each
    process restores its own. Exact with `num_workers=0` (workers would hold copies of the generators).
    """

    def __init__(self, **generators):
        for name, generator in generators.items():
            if not isinstance(generator, (torch.Generator, np.random.Generator)):
                raise TypeError(f"generator {name!r} must be a torch.Generator or numpy Generator, got {type(generator)}.")
        self.generators, self._pending = generators, []

    def __getitem__(self, name: str):
        return self.generators[name]

    def _state(self) -> dict:
        return {name: g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state
                for name, g in self.generators.items()}

    def before_batch(self) -> None:
        self._pending.append(self._state())

    def batch_consumed(self) -> None:
        if self._pending:
            self._pending.pop(0)

    def state_dict(self) -> dict:
        own = self._pending[0] if self._pending else self._state()
        return {"per_process": gather_object([own])}

    def load_state_dict(self, state: dict) -> None:
        process = PartialState()
        if len(state["per_process"]) != process.num_processes:
            raise ValueError(f"checkpoint has generator states of {len(state['per_process'])} processes, "
                             f"this run has {process.num_processes}.")
        for name, value in state["per_process"][process.process_index].items():
            generator = self.generators[name]
            if isinstance(generator, torch.Generator):
                generator.set_state(value)
            else:
                generator.bit_generator.state = value
        self._pending = []


class _Progress:
    """The loop's counters, saved with every checkpoint."""

    def __init__(self):
        self.step = self.epoch = self.batches_in_epoch = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]


def _keep_global_rng(loader):
    """Iterate `loader` without its start drawing from the global torch RNG. A DataLoader draws its base seed from
    that RNG when its iterator starts; the uninterrupted run made that draw at the epoch's start, before the RNG
    state a checkpoint restores (dropout masks would otherwise shift by one draw after a resume)."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        iterator = iter(loader)
        first = next(iterator, None)
    if first is None:
        return
    yield first
    yield from iterator


@contextlib.contextmanager
def without_zero3_init(accelerator: Accelerator):
    """Context in which models are built whole even when the DeepSpeed config asks for `zero3_init`: that flag
    makes transformers partition each tower as it is built, before a composite model (RelaxedCLIP) initialises its
    weights, which then meet empty shards. The model is partitioned by `prepare` instead; for models of BERT/ViT-B
    size the unpartitioned copy on each process costs little. (Accelerate's `zero3_init_context_manager` leaves
    transformers' ZeRO-3 config in place, so the config is unset here and restored after.)"""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or not plugin.zero3_init_flag:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def give_scalar_parameters_one_dimension(model: torch.nn.Module) -> list[str]:
    """DeepSpeed (0.19) starts by broadcasting every parameter through a uint8 view, which a 0-d tensor cannot take
    (RelaxedCLIP's `logit_scale`). Such parameters get shape (1,) for the engine's lifetime; state dicts keep the
    0-d shape (a state-dict hook on the owning module), so exported folders and checkpoints load into the plain
    model, and a 0-d entry loads back into the (1,) parameter (a load pre-hook). Returns the reshaped names."""
    reshaped = []
    for module_name, module in model.named_modules():
        names = [name for name, parameter in module.named_parameters(recurse=False) if parameter.dim() == 0]
        if not names:
            continue
        for name in names:
            parameter = getattr(module, name)
            parameter.data = parameter.data.reshape(1)
            reshaped.append(f"{module_name}.{name}" if module_name else name)

        def to_scalar(module, state_dict, prefix, local_metadata, names=tuple(names)):
            for name in names:
                value = state_dict.get(prefix + name)
                if value is not None and value.numel() == 1:  # ZeRO-3 holds an empty shard outside forward
                    state_dict[prefix + name] = value.reshape(())

        def from_scalar(module, state_dict, prefix, *args, names=tuple(names)):
            for name in names:
                value = state_dict.get(prefix + name)
                if value is not None and value.dim() == 0:
                    state_dict[prefix + name] = value.reshape(1)

        module.register_state_dict_post_hook(to_scalar)
        module.register_load_state_dict_pre_hook(from_scalar)
    return reshaped


class TrainingLoop:
    """Prepare, train, checkpoint, resume, evaluate. `run()` returns
    `{"history": [{"step": s, "loss": total, <term>: value, ...} per step], "evaluations": [...], "step", "resumed_from"}`;
    loss values are means over processes (and over the micro-batches of a step). `evaluate(loop, epoch) -> dict`
    runs on every process after each epoch and after the last step (use `loop.predict`); its result is logged and
    kept in "evaluations". `generators` and `checkpoint_objects` (anything with state_dict/load_state_dict) are
    saved with every checkpoint too."""

    def __init__(self, accelerator: Accelerator, args: TrainingArguments, model, optimizer, train_dataloader,
                 objective: Objective, scheduler=None, evaluate=None, generators: BatchGenerators | None = None,
                 checkpoint_objects=()):
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be an Objective, got {type(objective).__name__}.")
        self.accelerator, self.args, self.objective, self.evaluate = accelerator, args, objective, evaluate
        self.generators = generators
        self.scalar_parameters = (
            give_scalar_parameters_one_dimension(model) if accelerator.distributed_type == DistributedType.DEEPSPEED else []
        )
        prepared = accelerator.prepare(model, optimizer, train_dataloader, *([scheduler] if scheduler else []))
        self.model, self.optimizer, self.train_dataloader = prepared[:3]
        self.scheduler = prepared[3] if scheduler else None
        self.progress = _Progress()
        extra = [generators] if generators is not None else []
        accelerator.register_for_checkpointing(self.progress, objective, *extra, *checkpoint_objects)
        if len(self.train_dataloader) == 0:
            raise ValueError("the training data gives no batch (fewer rows than the per-process batch size?).")
        self.steps_per_epoch = math.ceil(len(self.train_dataloader) / args.gradient_accumulation_steps)
        self.total_steps = args.max_steps or args.num_epochs * self.steps_per_epoch
        self.history: list[dict] = []
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    def full_state_dict(self) -> dict:
        """The whole model's state dict on the main process (`accelerator.get_state_dict`, a collective under ZeRO-3,
        whose consolidation bypasses the state-dict hooks): 0-d parameters given shape (1,) for DeepSpeed are 0-d
        again, as the plain model expects."""
        state = self.accelerator.get_state_dict(self.model)
        if state is not None:
            for name in self.scalar_parameters:
                if name in state and state[name].numel() == 1:
                    state[name] = state[name].reshape(())
        return state

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def checkpoint_root(self) -> Path:
        return Path(self.accelerator.project_dir) / "checkpoints"

    def _resume(self) -> str | None:
        folders = sorted(self.checkpoint_root.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1])) \
            if self.checkpoint_root.is_dir() else []
        if not folders:
            return None
        if not self.args.resume:
            # A fresh start in a used output_dir: name the new checkpoints after the existing ones (accelerate refuses
            # to overwrite a folder), so the newest checkpoint is always this run's and nothing is deleted up front;
            # the old run's folders go as checkpoints_total_limit rotates them out.
            self.accelerator.project_configuration.iteration = int(folders[-1].name.split("_")[1]) + 1
            logger.warning("resume=false: starting from step 0; %d earlier checkpoint(s) in %s are kept and new ones "
                           "are numbered from checkpoint_%d.", len(folders), self.checkpoint_root,
                           self.accelerator.project_configuration.iteration)
            return None
        self.accelerator.load_state(str(folders[-1]))
        # load_state does not advance automatic naming: continue after the loaded folder
        self.accelerator.project_configuration.iteration = int(folders[-1].name.split("_")[1]) + 1
        logger.info("Resumed from %s at step %d (epoch %d)", folders[-1], self.progress.step, self.progress.epoch)
        return str(folders[-1])

    def run(self) -> dict:
        accelerator, args = self.accelerator, self.args
        self.objective.on_train_start(self)
        resumed_from = self._resume()
        evaluations = []
        saved_at = self.progress.step if resumed_from else None
        resumed_mid_epoch = resumed_from is not None and self.progress.batches_in_epoch > 0
        while self.progress.step < self.total_steps:
            epoch = self.progress.epoch
            self.train_dataloader.set_epoch(epoch)
            loader = self.train_dataloader
            if resumed_mid_epoch:
                loader = _keep_global_rng(skip_first_batches(self.train_dataloader, self.progress.batches_in_epoch))
                resumed_mid_epoch = False
            else:
                self.progress.batches_in_epoch = 0
                self.objective.on_epoch_start(self, epoch)
            self.model.train()
            micro = []  # the terms of the micro-batches of one optimizer step (logged as their mean)
            for batch in loader:
                if self.generators is not None:
                    self.generators.batch_consumed()
                with accelerator.accumulate(self.model):
                    terms = self.objective.compute_loss(self.model, batch)
                    loss = sum(terms.values())
                    accelerator.backward(loss)
                    if args.max_grad_norm is not None and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    if self.scheduler is not None and accelerator.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                self.progress.batches_in_epoch += 1
                micro.append({name: value.detach() for name, value in terms.items()})
                if not accelerator.sync_gradients:  # an accumulation step (the epoch's last batch always syncs)
                    continue
                self.progress.step += 1
                self._pending.append((self.progress.step, {n: sum(m[n] for m in micro) / len(micro) for n in micro[0]}))
                micro = []
                self.objective.on_step_end(self, self.progress.step)
                if self.progress.step % args.logging_steps == 0 or self.progress.step == self.total_steps:
                    self._log()
                if args.checkpointing_steps and self.progress.step % args.checkpointing_steps == 0:
                    self.accelerator.save_state()
                    saved_at = self.progress.step
                if self.progress.step >= self.total_steps:
                    break
            epoch_finished = self.progress.batches_in_epoch == len(self.train_dataloader)
            if epoch_finished:
                self.progress.epoch += 1
                self.progress.batches_in_epoch = 0
            if self.evaluate is not None and (epoch_finished or self.progress.step >= self.total_steps):
                evaluations.append({"epoch": epoch, "step": self.progress.step, **self.evaluate(self, epoch)})
                accelerator.log({f"eval/{k}": v for k, v in evaluations[-1].items()}, step=self.progress.step)
        self._log()
        if args.checkpointing_steps and saved_at != self.progress.step:
            self.accelerator.save_state()
        return {"history": self.history, "evaluations": evaluations, "step": self.progress.step,
                "resumed_from": resumed_from}

    def _log(self) -> None:
        """One reduction and one host sync per log step for all steps since the last one."""
        if not self._pending:
            return
        names = list(self._pending[0][1])
        stacked = torch.stack([torch.stack([terms[n].float() for n in names]) for _, terms in self._pending])
        means = self.accelerator.reduce(stacked.to(self.accelerator.device), reduction="mean").cpu().tolist()
        for (step, _), row in zip(self._pending, means):
            record = {"step": step, "loss": float(sum(row)), **dict(zip(names, row))}
            self.history.append(record)
        self._pending = []
        last = self.history[-1]
        self.accelerator.log({f"train/{k}": v for k, v in last.items() if k != "step"}, step=last["step"])
        logger.info("step %d/%d %s", last["step"], self.total_steps,
                    {k: round(v, 5) for k, v in last.items() if k != "step"})

    @torch.no_grad()
    def predict(self, dataloader, forward) -> torch.Tensor | dict:
        """`forward(prepared_model, batch)` over `dataloader` on EVERY process (the prepared model, so sharded
        weights under ZeRO-3/FSDP are gathered by their own hooks), gathered with `gather_for_metrics` (duplicates
        of the last uneven batch dropped): the full result on every process, concatenated along dim 0."""
        loader = self.accelerator.prepare_data_loader(dataloader)
        was_training = self.model.training
        self.model.eval()
        parts = []
        for batch in loader:
            parts.append(self.accelerator.gather_for_metrics(forward(self.model, batch)))
        self.model.train(was_training)
        if isinstance(parts[0], dict):
            return {key: torch.cat([part[key] for part in parts]).cpu() for key in parts[0]}
        return torch.cat(parts).cpu()


def training_facts(summary: dict) -> dict:
    """Run facts of a `TrainingLoop.run()` summary for a results.json: steps, the checkpoint resumed from, and the
    first and last logged value of every loss term (`first_loss`, `final_<term>`...)."""
    facts = {"steps": summary["step"], "resumed_from": summary["resumed_from"]}
    history = summary["history"]
    if history:
        facts.update({f"first_{key}": value for key, value in history[0].items() if key != "step"})
        facts.update({f"final_{key}": value for key, value in history[-1].items() if key != "step"})
    return facts


__all__ = ["BatchGenerators", "Objective", "TrainingArguments", "TrainingLoop", "build_accelerator",
           "check_synchronised", "parse_args", "per_process_batch_size", "training_facts"]
