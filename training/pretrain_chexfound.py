"""Self-supervised DINOv2/iBOT pretraining of `CheXFoundModel` (CheXFound paper 001 §III-A, §IV-A-1) with Accelerate.

    python -m cxrfm.training.pretrain_chexfound --config training/configs/pretrain_chexfound_tiny.yaml
    accelerate launch --config_file training/configs/accelerate/multi_gpu.yaml -m cxrfm.training.pretrain_chexfound \
        --config training/configs/pretrain_chexfound_vitl16_224.yaml --dataset mimic-cxr --data_root /data/mimic

Each image gives 2 global + n local crops (`MultiCropAugmentation`, seeded per (seed, epoch, row) so a resumed or
re-sharded run sees the same crops); the student sees block-masked global crops, the EMA teacher the unmasked ones;
the objective (`cxrfm.training.losses.dino_ibot_objective`) sums the DINO [CLS], KoLeo and iBOT terms. The skeleton
`cxrfm.training.recipe` runs the loop, `save_state` every `checkpointing_steps` and exact resume. At the end the
teacher is exported to `<output_dir>/teacher`: a `CheXFoundModel.save_pretrained` folder with its processor and
`ssl_heads.safetensors` (DINO/iBOT heads under the official names, as `cxrfm convert chexfound` writes), which
`init_from` of the next resolution stage or of a continued run reads. `init_from` also takes a transformers
`Dinov2Model` folder (RAD-DINO layout), converted in memory.
The teacher folder also gets `results.json` (the run's facts and first / last loss terms) and its model card.

YAML keys and CLI flags are the fields of `PretrainArguments`; unknown keys are errors.
"""

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from ..model_cards import write_results_and_card
from ..modeling.chexfound import CheXFoundConfig, CheXFoundModel
from ..modeling.chexfound.modeling_chexfound import interpolate_patch_pos_embed
from ..processing.augment_cxr import BLUR_PROBABILITIES_AS_INTENDED, BLUR_PROBABILITIES_AS_RUN, MultiCropAugmentation
from ..processing.datasets import LoaderOptions, load_dataset_by_name, load_phantom
from ..processing.image_processing_cxr import CXRImageProcessor
from .losses.dino_head import DINOHead
from .losses.dino_ibot_objective import DINOiBOTObjective, SSLNetwork, SSLSchedules, build_param_groups, make_teacher
from .recipe import (
    TrainingArguments,
    TrainingLoop,
    build_accelerator,
    parse_args,
    per_process_batch_size,
    training_facts,
)

logger = logging.getLogger(__name__)

SSL_HEADS_FILENAME = "ssl_heads.safetensors"  # the name `cxrfm convert chexfound` writes
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass(kw_only=True)
class PretrainArguments(TrainingArguments):
    """Recipe settings; defaults are the official CheXFound 224 stage (vitl16_ibot333.yaml). `learning_rate` is the
    base lr per 1024 images (official `base_lr`), scaled by `lr_scaling`; `weight_decay` is the start value."""

    learning_rate: float = 2e-4
    weight_decay: float = 0.04
    model_preset: str = "chexfound-vit-large-patch16-512"
    patch_size: int | None = field(default=None, metadata={"help": "override the preset's patch size (tiny CPU runs)"})
    layerscale_value: float | None = field(default=None, metadata={"help": "override the preset's LayerScale init (tiny CPU runs)"})
    init_from: str | None = field(default=None, metadata={"help": "previous stage's teacher export, a converted official checkpoint or a Dinov2Model folder"})
    pos_embed_init: str = field(default="reinit", metadata={"help": "new resolution: reinit (official) | interpolate"})
    drop_path_rate: float = 0.4
    gradient_checkpointing: bool = False
    student_single_call: bool = False
    global_crops_size: int = 224
    local_crops_size: int = 96
    local_crops_number: int = 8
    global_crops_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crops_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    blur_as_intended: bool = field(default=False, metadata={"help": "blur p 1.0/0.1/0.5 instead of the official (buggy) 0.0/0.9/0.5"})
    dino_loss_weight: float = 1.0
    dino_n_prototypes: int = 131072
    dino_bottleneck_dim: int = 384
    koleo_loss_weight: float = 0.1
    koleo_group_size: int | None = None
    ibot_loss_weight: float = 3.0
    ibot_separate_head: bool = True
    ibot_n_prototypes: int = 131072
    ibot_bottleneck_dim: int = 256
    head_hidden_dim: int = 2048
    head_n_layers: int = 3
    mask_sample_probability: float = 0.5
    mask_ratio_min_max: list[float] = field(default_factory=lambda: [0.1, 0.5])
    centering: str = "sinkhorn_knopp"
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    momentum_teacher: float = 0.994
    final_momentum_teacher: float = 1.0
    lr_scaling: str = field(default="sqrt_wrt_1024", metadata={"help": "sqrt_wrt_1024 | linear_wrt_1024 | none"})
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay_end: float = 0.2
    layerwise_decay: float = 1.0
    patch_embed_lr_mult: float = 0.2
    clip_grad: float | None = 3.0
    freeze_last_layer_epochs: int = 1
    epoch_length: int | None = field(default=None, metadata={"help": "iterations per schedule epoch (official 2500); None: one pass over the data"})
    num_workers: int = 0
    phantom_num_images: int = 512
    phantom_image_size: int = 64
    export: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.max_grad_norm is not None or self.warmup_steps:
            raise ValueError("PretrainArguments: use clip_grad (per submodule, as the official code) and warmup_epochs, "
                             "not max_grad_norm / warmup_steps.")
        choices = {"pos_embed_init": ("reinit", "interpolate"), "centering": ("sinkhorn_knopp", "centering"),
                   "lr_scaling": ("sqrt_wrt_1024", "linear_wrt_1024", "none")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"PretrainArguments.{name} must be one of {valid}, got {getattr(self, name)!r}.")
        if self.koleo_group_size is not None and self.koleo_group_size < 2:
            raise ValueError(f"koleo_group_size must be >= 2 (KoLeo needs a neighbour), got {self.koleo_group_size}.")


def scaled_lr(args: PretrainArguments) -> float:
    """Official `apply_scaling_rules_to_cfg`: base_lr * sqrt(global batch / 1024) (or linear, or none)."""
    ratio = args.batch_size / 1024
    return args.learning_rate * {"sqrt_wrt_1024": math.sqrt(ratio), "linear_wrt_1024": ratio, "none": 1.0}[args.lr_scaling]


# data ----------------------------------------------------------------------------------------------------------
def image_to_tensor(image) -> torch.Tensor:
    """A decoded loader image (PIL 8/16-bit grey or RGB) -> `(1 or 3, H, W)` float32 on [0, 1]."""
    array = np.asarray(image)
    scale = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else 1.0
    tensor = torch.from_numpy(array.astype(np.float32) / scale)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


class MultiCropDataset(torch.utils.data.Dataset):
    """Rows of a map-style `datasets.Dataset` -> multi-crops; crop randomness from (seed, epoch, row), so it does not
    depend on the number of processes, the worker or a resume."""

    def __init__(self, rows, augmentation: MultiCropAugmentation, num_channels: int, seed: int):
        self.rows, self.augmentation, self.num_channels, self.seed = rows, augmentation, num_channels, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        image = image_to_tensor(self.rows[index]["image"])
        if image.shape[0] != self.num_channels:
            image = image.mean(0, keepdim=True).expand(self.num_channels, -1, -1)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
        return self.augmentation(image, generator)


def collate_crops(samples) -> dict[str, torch.Tensor]:
    """Crop-major batches: global `(2B, C, S, S)` (crop 0 of every image, then crop 1), local `(n B, C, s, s)`."""
    global_crops = torch.stack([g for g, _ in samples], dim=1).flatten(0, 1)
    local_crops = torch.stack([l for _, l in samples], dim=1).flatten(0, 1)
    return {"global_crops": global_crops, "local_crops": local_crops}


def load_rows(args: PretrainArguments):
    if args.dataset == "phantom":
        return load_phantom(args.phantom_num_images, args.phantom_image_size, seed=args.seed)["train"]
    return load_dataset_by_name(args.dataset, LoaderOptions(root=args.data_root, splits=["train"]))["train"]


# networks, initialisation, export ------------------------------------------------------------------------------
def build_heads(args: PretrainArguments, hidden_size: int) -> tuple[DINOHead, DINOHead | None]:
    dino = DINOHead(hidden_size, args.dino_n_prototypes, args.head_hidden_dim, args.dino_bottleneck_dim, args.head_n_layers)
    ibot = (DINOHead(hidden_size, args.ibot_n_prototypes, args.head_hidden_dim, args.ibot_bottleneck_dim, args.head_n_layers)
            if args.ibot_separate_head else None)
    return dino, ibot


def load_source_backbone(folder: Path) -> CheXFoundModel:
    """A CheXFoundModel from a CheXFound folder, or from a transformers Dinov2Model folder (converted in memory)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"init_from {folder}: no config.json (expected a save_pretrained folder).")
    model_type = json.loads(config_file.read_text())["model_type"]
    if model_type == "chexfound":
        return CheXFoundModel.from_pretrained(folder)
    if model_type == "dinov2":
        from ..modeling.chexfound.convert_dinov2_hf import convert_dinov2_model
        from transformers import Dinov2Model

        return convert_dinov2_model(Dinov2Model.from_pretrained(folder))
    raise ValueError(f"init_from {folder}: model_type {model_type!r} is neither 'chexfound' nor 'dinov2'.")


def build_student(args: PretrainArguments) -> SSLNetwork:
    """Student network at `global_crops_size`, from scratch or from `init_from` (backbone + heads it has)."""
    if args.init_from is None:
        overrides = {name: getattr(args, name) for name in ("patch_size", "layerscale_value") if getattr(args, name)}
        config = CheXFoundConfig.from_preset(args.model_preset, image_size=args.global_crops_size,
                                             drop_path_rate=args.drop_path_rate, **overrides)
        backbone = CheXFoundModel(config)
        dino_head, ibot_head = build_heads(args, config.hidden_size)
        return SSLNetwork(backbone, dino_head, ibot_head, args.student_single_call)
    folder = Path(args.init_from)
    source = load_source_backbone(folder)
    config = copy.deepcopy(source.config)
    config.image_size, config.drop_path_rate = args.global_crops_size, args.drop_path_rate
    backbone = CheXFoundModel(config)
    state = source.state_dict()
    if source.config.image_size != config.image_size:
        if args.pos_embed_init == "reinit":  # official load_pretrained_weights_train deletes pos_embed
            state["vit.pos_embed"] = backbone.vit.pos_embed.detach().clone()
        else:
            grid = config.image_size // config.patch_size
            patch = interpolate_patch_pos_embed(source.vit.pos_embed[:, 1:].detach(), (grid, grid), 0.0, False)
            state["vit.pos_embed"] = torch.cat([source.vit.pos_embed[:, :1].detach().float(), patch], dim=1)
        logger.info("pos_embed %s: %d -> %d px", args.pos_embed_init, source.config.image_size, config.image_size)
    backbone.load_state_dict(state, strict=True)
    dino_head, ibot_head = build_heads(args, config.hidden_size)
    heads_file = folder / SSL_HEADS_FILENAME
    heads = load_file(str(heads_file)) if heads_file.is_file() else {}
    for prefix, head in (("dino_head.", dino_head), ("ibot_head.", ibot_head)):
        if head is None:
            continue
        own = {k[len(prefix):]: v for k, v in heads.items() if k.startswith(prefix)}
        if not own:
            logger.warning("init_from %s has no %s* tensors: %s initialised from scratch.", folder, prefix, prefix[:-1])
            continue
        expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in own.items()}
        if expected != found:
            raise ValueError(f"{heads_file}: {prefix}* shapes {found} do not match the recipe's head {expected}; "
                             "set the *_n_prototypes / *_bottleneck_dim / head_* fields to the checkpoint's.")
        head.load_state_dict(own, strict=True)
        logger.info("Loaded %s from %s", prefix[:-1], heads_file)
    return SSLNetwork(backbone, dino_head, ibot_head, args.student_single_call)


def export_teacher(teacher: SSLNetwork, objective: DINOiBOTObjective, out_dir: Path, args: PretrainArguments) -> Path:
    """Teacher backbone as a CheXFoundModel folder (+ processor) and its heads in `ssl_heads.safetensors`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher.backbone.config.drop_path_rate = 0.0
    teacher.backbone.save_pretrained(out_dir)
    size = args.global_crops_size
    CXRImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                      num_channels=teacher.backbone.config.num_channels).save_pretrained(out_dir)
    heads = {f"dino_head.{k}": v for k, v in teacher.dino_head.state_dict().items()}
    if teacher.ibot_head is not None:
        heads.update({f"ibot_head.{k}": v for k, v in teacher.ibot_head.state_dict().items()})
    if args.centering == "centering":  # official SSLMetaArch buffer names and shapes
        heads["dino_loss.center"] = objective.dino_targets.center
        heads["ibot_patch_loss.center"] = objective.ibot_targets.center.reshape(1, 1, -1)
    save_file({k: v.detach().cpu().contiguous() for k, v in heads.items()}, str(out_dir / SSL_HEADS_FILENAME),
              metadata={"source": "cxrfm.training.pretrain_chexfound", "branch": "teacher"})
    return out_dir


def training_results(args: PretrainArguments, summary: dict, num_images: int) -> dict:
    """The exported folder's results.json: the run's facts and the first / last logged loss terms (pretraining has
    no labelled evaluation, so the card lists no metrics)."""
    return {"dataset": str(args.dataset), "num_images": num_images, "global_batch_size": args.batch_size,
            "global_crops_size": args.global_crops_size, "init_from": args.init_from, **training_facts(summary)}


# main ----------------------------------------------------------------------------------------------------------
def train(args: PretrainArguments) -> dict:
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    logger.info("PretrainArguments: %s", asdict(args))
    student = build_student(args)
    if args.gradient_checkpointing:
        student.backbone.activation_checkpointing_enable()
    teacher = make_teacher(student)
    config = student.backbone.config
    augmentation = MultiCropAugmentation(
        args.global_crops_size, args.local_crops_size, args.local_crops_number, tuple(args.global_crops_scale),
        tuple(args.local_crops_scale),
        blur_probabilities=BLUR_PROBABILITIES_AS_INTENDED if args.blur_as_intended else BLUR_PROBABILITIES_AS_RUN,
        image_mean=IMAGENET_MEAN[: config.num_channels], image_std=IMAGENET_STD[: config.num_channels],
    )
    dataset = MultiCropDataset(load_rows(args), augmentation, config.num_channels, args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_process_batch_size(args, accelerator), shuffle=True,
                                         drop_last=True, collate_fn=collate_crops, num_workers=args.num_workers)
    steps_per_pass = len(loader) // (accelerator.num_processes * args.gradient_accumulation_steps)
    epoch_length = args.epoch_length or max(steps_per_pass, 1)
    lr = scaled_lr(args)
    schedules = SSLSchedules.build(
        epoch_length, args.num_epochs, lr, args.min_lr, args.warmup_epochs, args.weight_decay, args.weight_decay_end,
        args.momentum_teacher, args.final_momentum_teacher, args.teacher_temp, args.warmup_teacher_temp,
        args.warmup_teacher_temp_epochs, args.freeze_last_layer_epochs,
    )
    groups = build_param_groups(student, config.num_hidden_layers, args.layerwise_decay, args.patch_embed_lr_mult)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))
    grid = args.global_crops_size // config.patch_size
    objective = DINOiBOTObjective(
        teacher, schedules, optimizer,
        {"dino": args.dino_loss_weight, "koleo": args.koleo_loss_weight, "ibot": args.ibot_loss_weight},
        args.centering, args.clip_grad, (grid, grid), args.mask_sample_probability, tuple(args.mask_ratio_min_max),
        args.student_temp, args.koleo_group_size, args.seed, dataset,
    )
    if args.max_steps is None and args.epoch_length is not None:
        args.max_steps = args.num_epochs * args.epoch_length
    logger.info("Running training: %d images, global batch %d, %d processes, lr %.3g (base %.3g, %s), %d schedule "
                "iterations", len(dataset), args.batch_size, accelerator.num_processes, lr, args.learning_rate,
                args.lr_scaling, args.num_epochs * epoch_length)
    loop = TrainingLoop(accelerator, args, student, optimizer, loader, objective)
    summary = loop.run()
    if args.export and accelerator.is_main_process:
        summary["export_dir"] = str(export_teacher(teacher, objective, Path(args.output_dir) / "teacher", args))
        write_results_and_card(summary["export_dir"], "chexfound", training_results(args, summary, len(dataset)),
                               base_model=args.init_from,
                               training_data=f"{args.dataset}: {len(dataset):,} images, self-supervised (DINOv2 + iBOT)"
                                             f" at {args.global_crops_size} px, {summary['step']:,} steps.")
    accelerator.wait_for_everyone()
    summary["teacher"] = teacher
    return summary


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return train(parse_args(PretrainArguments, argv))


if __name__ == "__main__":
    main()
