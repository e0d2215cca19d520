"""The Hub contract every cxrfm model family keeps, and the registry of families it is checked over.

A saved folder (from `save_pretrained`, a recipe or `cxrfm convert`) must load where cxrfm is not installed, through
`trust_remote_code=True`, with the family's Auto classes, and run the family's pipelines; with cxrfm installed
(`import cxrfm`) the same folder loads without `trust_remote_code`. `tests/test_family_contract.py` checks this for
every entry of `FAMILIES` in a subprocess where cxrfm and every package outside the plain Hub set are blocked, and
`check_folder` finds what makes a folder break it without running any of its code (`cxrfm push` refuses such a
folder).

How a family keeps the contract (see `modeling/chexfound/` or `modeling/relaxed_clip/`):
1. Its folder `modeling/<family>/` imports only its own files (relative imports) and the plain set `PLAIN_PACKAGES`.
2. Each module registers its own classes: `Config.register_for_auto_class()`,
   `Model.register_for_auto_class("AutoModel...")`, and, guarded by `if __name__.split(".")[0] == "cxrfm":`,
   `AutoConfig.register` / `AutoModel*.register` / `PIPELINE_REGISTRY.register_pipeline` for the library route.
3. Its config mixes in `HubConfigMixin` (a copy marked `# Copied from ...`) and lists custom pipelines in
   `hub_pipelines`; its modeling module imports each `pipeline_*.py` sibling so `save_pretrained` copies it.
4. It adds one `Family` entry below: config class, Auto class -> model class, a tiny seeded model, a processor, and
   the pipeline tasks with the keyword arguments each needs (the "mgca" entry is a worked example). The contract
   test (`tests/test_family_contract.py`) and `check_folder` pick it up by themselves; a dual encoder also sets
   `text_inputs` and `processor_auto_class="AutoProcessor"`. A custom task of the family must be in its config's
   `hub_pipelines`; a stock transformers task (e.g. `image-feature-extraction`) needs only its Auto class in
   `auto_classes`, and is expected to refuse a 16-bit PNG path (it decodes paths to 8-bit: an all-white image).
"""

from __future__ import annotations

import ast
import json
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .modeling.chexfound import CheXFoundConfig, CheXFoundModel, GLoRIConfig, GLoRIForMultiLabel
from .modeling.mgca import MGCAConfig, MGCAModel, MGCAProcessor
from .modeling.relaxed_clip import RelaxedCLIPConfig, RelaxedCLIPModel
from .processing import CXRCLIPProcessor, CXRImageProcessor

# What a Hub user has: remote code may import these (and the standard library), nothing else; pydicom is optional
# and imported only when a DICOM input arrives.
PLAIN_PACKAGES = (
    "torch", "torchvision", "transformers", "timm", "safetensors", "huggingface_hub", "tokenizers", "PIL", "numpy",
    "yaml",
)
OPTIONAL_PACKAGES = ("pydicom",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")

# Findings the tiny models are asked about; their labels are the tiny GLoRI's classes.
FINDINGS = ("Cardiomegaly", "Edema", "Pleural Effusion")


@dataclass(frozen=True)
class Family:
    """One model family's contract.

    Attributes:
        name: registry key (the folder name under `modeling/`).
        config_class: the family's config; its `model_type` identifies the family's folders.
        auto_classes: transformers Auto class name -> the model class it must load from a saved folder.
        make_tiny_model: returns a small model with fixed, non-trivial weights (seeded), in eval mode.
        make_processor: returns the processor saved beside the model (`CXRImageProcessor` or `CXRCLIPProcessor`).
        processor_auto_class: the Auto class that loads that processor from the folder.
        pipeline_tasks: task -> keyword arguments of one call; every task must run from a saved folder.
        text_inputs: texts fed with the images when comparing model outputs (dual encoders), else empty.
        output_names: model output fields compared between the installed and the remote-code model.
    """

    name: str
    config_class: type
    auto_classes: dict[str, type]
    make_tiny_model: Callable[[], torch.nn.Module]
    make_processor: Callable[[], Any]
    pipeline_tasks: dict[str, dict[str, Any]]
    text_inputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ("last_hidden_state",)
    processor_auto_class: str = "AutoImageProcessor"

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def custom_tasks(self) -> dict[str, dict]:
        """Tasks served by the folder's own pipeline code (`config.custom_pipelines`), not by transformers."""
        return dict(getattr(self.config_class, "hub_pipelines", {}))



def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Replace every parameter by seeded noise: outputs then differ per label and per input, so a comparison
    between two loaded copies can fail (a freshly initialised head gives near-identical scores)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def _image_processor() -> CXRImageProcessor:
    return CXRImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _tiny_chexfound() -> CheXFoundModel:
    return _randomized(CheXFoundModel(CheXFoundConfig.from_preset("tiny", patch_size=8)), seed=1)


def _tiny_glori() -> GLoRIForMultiLabel:
    backbone = CheXFoundConfig.from_preset("tiny", num_hidden_layers=4, patch_size=8)
    config = GLoRIConfig(
        backbone_config=backbone, decoder_dim=8, num_heads=2, ffn_dim=16, id2label=dict(enumerate(FINDINGS))
    )
    return _randomized(GLoRIForMultiLabel(config), seed=2)


def _tiny_relaxed_clip() -> RelaxedCLIPModel:
    return _randomized(RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny")), seed=3)


def tiny_wordpiece_tokenizer():
    """A WordPiece (BERT) tokenizer over 68 tokens, ids < the tiny CLIP text tower's 128-word vocabulary; `[SEP]` is
    id 1, the tiny tower's `eos_token_id`, which it pools at. Built in memory: no download."""
    from transformers import BertTokenizer

    words = ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "no", "finding", "effusion", "edema", "pleural",
             "cardiomegaly", "a", "photo", "of", "this", "is", "x", "-", "ray", "."]
    letters = [c for c in string.ascii_lowercase if c not in words]
    vocab = words + letters + ["##" + c for c in string.ascii_lowercase]
    return BertTokenizer(vocab={token: index for index, token in enumerate(vocab)})


def _clip_processor() -> CXRCLIPProcessor:
    return CXRCLIPProcessor(image_processor=_image_processor(), tokenizer=tiny_wordpiece_tokenizer())


FAMILIES: dict[str, Family] = {
    "chexfound": Family(
        name="chexfound",
        config_class=CheXFoundConfig,
        auto_classes={"AutoModel": CheXFoundModel},
        make_tiny_model=_tiny_chexfound,
        make_processor=_image_processor,
        pipeline_tasks={"image-feature-extraction": {}, "cxr-feature-extraction": {}},
        output_names=("last_hidden_state", "pooler_output"),
    ),
    "glori": Family(
        name="glori",
        config_class=GLoRIConfig,
        auto_classes={"AutoModelForImageClassification": GLoRIForMultiLabel},
        make_tiny_model=_tiny_glori,
        make_processor=_image_processor,
        pipeline_tasks={"cxr-classification": {}},
        output_names=("logits",),
    ),
    "relaxed_clip": Family(
        name="relaxed_clip",
        config_class=RelaxedCLIPConfig,
        auto_classes={"AutoModel": RelaxedCLIPModel, "AutoModelForZeroShotImageClassification": RelaxedCLIPModel},
        make_tiny_model=_tiny_relaxed_clip,
        make_processor=_clip_processor,
        pipeline_tasks={
            "cxr-zero-shot-classification": {"findings": list(FINDINGS)},
            "zero-shot-image-classification": {"candidate_labels": list(FINDINGS)},
        },
        text_inputs=("no pleural effusion", "edema"),
        output_names=("logits_per_image", "image_embeds", "text_embeds"),
        processor_auto_class="AutoProcessor",
    ),
    # MGCA's image encoder as an image-feature extractor: `MGCAModel(pixel_values)` returns the local tokens and the
    # projected embedding (`pooler_output`); the processor is image processor + tokenizer with word ids.
    "mgca": Family(
        name="mgca",
        config_class=MGCAConfig,
        auto_classes={"AutoModel": MGCAModel},
        make_tiny_model=lambda: _randomized(MGCAModel(MGCAConfig.from_preset("tiny")), seed=4),
        make_processor=lambda: MGCAProcessor(_image_processor(), tiny_wordpiece_tokenizer(), max_length=16),
        pipeline_tasks={"image-feature-extraction": {}},
        output_names=("last_hidden_state", "pooler_output"),
        processor_auto_class="AutoProcessor",
    ),
}


def family_of(folder: str | Path) -> Family | None:
    """The registered family whose `model_type` a saved folder's config.json names, or None."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        return None
    model_type = json.loads(config_path.read_text()).get("model_type")
    return next((family for family in FAMILIES.values() if family.model_type == model_type), None)


def save_family_folder(family: Family, folder: str | Path, model=None, processor=None) -> Path:
    """Save a family's model and processor as one Hub folder (what recipes and `cxrfm convert` write)."""
    model = model if model is not None else family.make_tiny_model()
    processor = processor if processor is not None else family.make_processor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


def _module_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported top-level name or ".sibling", line, inside try) for each import statement of a Python file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded = {id(node) for block in ast.walk(tree) if isinstance(block, ast.Try) for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = "." + (node.module or "") if node.level else (node.module or "").split(".")[0]
            found.append((name, node.lineno, id(node) in guarded))
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno, id(node) in guarded) for alias in node.names]
    return found


def _check_code_files(folder: Path) -> list[str]:
    problems = []
    allowed = set(PLAIN_PACKAGES) | set(sys.stdlib_module_names)
    for path in sorted(folder.glob("*.py")):
        for name, line, guarded in _module_imports(path):
            if name.startswith("."):
                if not (folder / f"{name[1:].split('.')[0]}.py").is_file():
                    problems.append(f"{path.name}:{line}: imports {name}, which is not in the folder")
            elif name in OPTIONAL_PACKAGES:
                if not guarded:
                    problems.append(f"{path.name}:{line}: imports optional {name} outside try/except")
            elif name not in allowed:
                problems.append(f"{path.name}:{line}: imports {name}, which a Hub user does not have")
    return problems


def _check_reference(folder: Path, source: str, reference: str) -> list[str]:
    module = reference.rsplit(".", 1)[0] if isinstance(reference, str) else None
    if module is None or not (folder / f"{module}.py").is_file():
        return [f"{source} points at {reference!r}, whose file is not in the folder"]
    return []


def check_folder(folder: str | Path) -> list[str]:
    """What keeps a saved folder from loading and running where cxrfm is not installed; empty when nothing does.

    Checks, without running the folder's code: config.json names a registered family; weights are there; `auto_map`
    has `AutoConfig` and each of the family's Auto classes, and `custom_pipelines` each of its custom tasks, all
    pointing at files in the folder; a processor config with its `auto_map` entry; every `.py` file imports only
    the plain Hub set (`PLAIN_PACKAGES`, the standard library, pydicom inside try/except) and siblings present.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a folder"]
    if not (folder / "config.json").is_file():
        return [f"{folder}: no config.json"]
    config = json.loads((folder / "config.json").read_text())
    family = family_of(folder)
    if family is None:
        known = sorted(f.model_type for f in FAMILIES.values())
        return [f"config.json: model_type {config.get('model_type')!r} is not a cxrfm family ({', '.join(known)})"]

    problems = []
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        problems.append(f"no weights ({' or '.join(WEIGHT_FILES)})")
    auto_map = config.get("auto_map") or {}
    for auto_class in ("AutoConfig", *family.auto_classes):
        if auto_class not in auto_map:
            problems.append(f"config.json: auto_map has no {auto_class}")
        else:
            problems += _check_reference(folder, f"config.json auto_map.{auto_class}", auto_map[auto_class])
    pipelines = config.get("custom_pipelines") or {}
    for task in family.custom_tasks:
        if task not in pipelines:
            problems.append(f"config.json: custom_pipelines has no {task!r}")
        else:
            problems += _check_reference(folder, f"config.json custom_pipelines.{task}", pipelines[task].get("impl"))

    processor_auto_class = family.processor_auto_class
    entries = {}
    for name in PROCESSOR_FILES:
        if (folder / name).is_file():
            data = json.loads((folder / name).read_text())
            entries.update((data.get("auto_map") or {}))
            entries.update((data.get("image_processor") or {}).get("auto_map") or {})
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        problems.append(f"no processor config ({' or '.join(PROCESSOR_FILES)}): save the processor beside the model")
    elif processor_auto_class not in entries:
        problems.append(f"processor config: auto_map has no {processor_auto_class}")
    else:
        problems += _check_reference(folder, f"processor auto_map.{processor_auto_class}", entries[processor_auto_class])
    return problems + _check_code_files(folder)


__all__ = [
    "FAMILIES",
    "FINDINGS",
    "Family",
    "PLAIN_PACKAGES",
    "check_folder",
    "family_of",
    "save_family_folder",
    "tiny_wordpiece_tokenizer",
]
