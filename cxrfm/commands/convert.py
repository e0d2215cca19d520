"""`cxrfm convert KIND SRC OUT_DIR ...`: an official checkpoint -> a `save_pretrained` folder.

Each kind is one entry of `CONVERTERS`; a family adds its converter with one entry:

    CONVERTERS["mgca"] = Converter(help="...", add_arguments=_add_mgca_arguments, run=_run_mgca)

`add_arguments(parser)` adds the kind's own arguments (SRC and OUT_DIR included), `run(args)` converts and
returns the output folder. Bad input raises ValueError/FileNotFoundError/FileExistsError naming the file; the
dispatcher turns those into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

SSL_HEADS_FILENAME = "ssl_heads.safetensors"
# torch.save writes a zip archive since torch 1.6; older files are a bare pickle (protocol byte 0x80).
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


@dataclass(frozen=True)
class Converter:
    """One `cxrfm convert KIND`: its help line, its arguments and the function that converts."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Path]
    description: str | None = None


def load_checkpoint(path: Path) -> dict:
    """`torch.load(path, weights_only=True)` on CPU; anything that needs arbitrary unpickling is refused.

    A file that is not a torch checkpoint at all (a text file, a truncated download) is a ValueError naming
    the file and its first bytes, not whatever torch's unpickler happens to raise.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith(_CHECKPOINT_MAGIC):
        raise ValueError(
            f"{path}: not a PyTorch checkpoint ({path.stat().st_size} bytes starting with {head!r}; a torch.save "
            f"file starts with b'PK\\x03\\x04' or a pickle protocol byte)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, IndexError, KeyError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) (only tensors and plain containers are "
            f"accepted, never arbitrary pickled objects; a truncated file fails here too): {error}"
        ) from error


def _refuse_non_empty(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"Output folder {out_dir} is not empty; pass --overwrite to replace its files.")


def convert_chexfound_file(
    src: Path,
    out_dir: Path,
    preset: str | None = None,
    branch: str = "teacher",
    num_attention_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an official CheXFound/DINOv2 checkpoint file into a `CheXFoundModel.save_pretrained` folder.

    `out_dir` receives `config.json`, `model.safetensors`, the remote code, `preprocessor_config.json`
    (`CXRImageProcessor`, CheXFound's evaluation transform at the model's `image_size`) and, when the
    checkpoint holds them, `ssl_heads.safetensors`: the DINO/iBOT head tensors (and SSLMetaArch loss centers)
    under their official names (`dino_head.mlp.0.weight`, `ibot_head.last_layer.weight_v`, ...) for
    continued pretraining. The folder is reloaded and checked against the converted tensors before returning.
    """
    import torch
    from safetensors.torch import save_file

    from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
    from cxrfm.modeling.chexfound.convert_chexfound import convert_chexfound_checkpoint, infer_chexfound_config
    from cxrfm.processing import CXRImageProcessor

    src, out_dir = Path(src), Path(out_dir)
    _refuse_non_empty(out_dir, overwrite)
    checkpoint = load_checkpoint(src)
    config = CheXFoundConfig.from_preset(preset) if preset else None
    backbone, heads = convert_chexfound_checkpoint(checkpoint, config, branch, num_attention_heads)
    if config is None:
        config = infer_chexfound_config(backbone, num_attention_heads=num_attention_heads)
        logger.info("Config inferred from tensor shapes (num_attention_heads=%d).", config.num_attention_heads)

    model = CheXFoundModel(config).eval()
    model.load_state_dict(backbone, strict=True)
    model.save_pretrained(out_dir)
    size = config.image_size
    processor = CXRImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, num_channels=config.num_channels
    )
    processor.save_pretrained(out_dir)
    if heads:
        save_file(
            {k: v.contiguous() for k, v in heads.items()},
            str(out_dir / SSL_HEADS_FILENAME),
            metadata={"source": src.name, "branch": branch},
        )

    # Prove the folder before reporting success: same tensors, same output on a small input.
    reloaded = CheXFoundModel.from_pretrained(out_dir).eval()
    reloaded_state = reloaded.state_dict()
    differing = sorted(
        k for k, v in backbone.items() if not torch.equal(reloaded_state[k], v.to(reloaded_state[k].dtype))
    )
    side = 4 * config.patch_size  # small input: the check is about tensors and config, not resolution
    pixel_values = torch.randn(1, config.num_channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        same_output = torch.equal(model(pixel_values).last_hidden_state, reloaded(pixel_values).last_hidden_state)
    if differing or not same_output:
        raise RuntimeError(
            f"Reloaded {out_dir} differs from the converted checkpoint: keys {differing[:10]}, "
            f"output equal: {same_output}."
        )
    logger.info(
        "Converted %s (%s, %d backbone tensors, %d head tensors) -> %s",
        src, branch, len(backbone), len(heads), out_dir,
    )
    return out_dir


def _add_chexfound_arguments(parser: argparse.ArgumentParser) -> None:
    from cxrfm.modeling.chexfound.configuration_chexfound import CHEXFOUND_PRESETS

    parser.add_argument("src", type=Path, help="official .pth file (read with torch.load(weights_only=True))")
    parser.add_argument("out_dir", type=Path, help="output folder for save_pretrained + ssl_heads.safetensors")
    parser.add_argument(
        "--preset", choices=sorted(CHEXFOUND_PRESETS), default=None,
        help="check the checkpoint against this preset (default: infer the config from tensor shapes)",
    )
    parser.add_argument("--branch", choices=("teacher", "student"), default="teacher")
    parser.add_argument(
        "--num-attention-heads", type=int, default=None,
        help="head count when inferring the config (shapes cannot show it; default hidden_size // 64)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")


def _run_chexfound(args: argparse.Namespace) -> Path:
    return convert_chexfound_file(
        args.src, args.out_dir, args.preset, args.branch, args.num_attention_heads, args.overwrite
    )


def convert_glori_file(
    src: Path,
    out_dir: Path,
    backbone_dir: Path,
    classifier_name: str | None = None,
    label_names: list[str] | None = None,
    n_last_blocks: int = 4,
    num_heads: int = 8,
    overwrite: bool = False,
) -> Path:
    """Convert an official GLoRI / linear-probe head (e.g. the released `glori.pth`) plus a converted CheXFound
    backbone folder into one `GLoRIForMultiLabel.save_pretrained` folder.

    The head layout (classes, width, cat_cls, blocks) is read from tensor shapes, except `num_heads` of the
    cross-attention (official: 8), which weights cannot show; the model is loaded strictly and
    the saved folder is reloaded and checked before returning. Without `label_names`, a 40-class head gets the
    CXR-LT 2024 names in CheXFound's query order.
    """
    import torch

    from cxrfm.modeling import CheXFoundModel, GLoRIForMultiLabel
    from cxrfm.modeling.chexfound.convert_glori import convert_glori_checkpoint, infer_head_config
    from cxrfm.processing.datasets import CXR_LT_40

    src, out_dir, backbone_dir = Path(src), Path(out_dir), Path(backbone_dir)
    _refuse_non_empty(out_dir, overwrite)
    if not (backbone_dir / "config.json").is_file():
        raise FileNotFoundError(f"{backbone_dir} has no config.json; convert the backbone first (cxrfm convert chexfound).")
    head = convert_glori_checkpoint(load_checkpoint(src), classifier_name)
    backbone = CheXFoundModel.from_pretrained(backbone_dir)
    head_config = infer_head_config(head, backbone.config, n_last_blocks)
    num_labels = head_config.pop("num_labels")
    if head_config["head"] == "glori":
        head_config["num_heads"] = num_heads
    if label_names is None:
        label_names = list(CXR_LT_40) if num_labels == len(CXR_LT_40) else [f"LABEL_{i}" for i in range(num_labels)]
    if len(label_names) != num_labels:
        raise ValueError(f"{src}: the head has {num_labels} classes but {len(label_names)} label names were given.")
    model = GLoRIForMultiLabel.from_backbone(backbone, id2label=dict(enumerate(label_names)), **head_config).eval()
    model.load_state_dict({**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, **head}, strict=True)
    model.save_pretrained(out_dir)
    if (backbone_dir / "preprocessor_config.json").is_file():
        from cxrfm.processing import CXRImageProcessor

        CXRImageProcessor.from_pretrained(backbone_dir).save_pretrained(out_dir)

    reloaded = GLoRIForMultiLabel.from_pretrained(out_dir).eval()
    generator = torch.Generator().manual_seed(0)
    features = (torch.randn(1, 16, model.config.feature_dim, generator=generator),
                torch.randn(1, model.config.feature_dim, generator=generator))
    with torch.inference_mode():
        same = torch.equal(model(backbone_features=features).logits, reloaded(backbone_features=features).logits)
    if not same:
        raise RuntimeError(f"Reloaded {out_dir} gives different logits from the converted head {src}.")
    logger.info("Converted %s (%s head, %d classes, %s) -> %s", src, model.config.head, num_labels, head_config, out_dir)
    return out_dir


def _add_glori_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="official head .pth (fvcore checkpoint or bare state dict)")
    parser.add_argument("out_dir", type=Path, help="output folder for GLoRIForMultiLabel.save_pretrained")
    parser.add_argument("--backbone", type=Path, required=True, help="CheXFoundModel folder (cxrfm convert chexfound)")
    parser.add_argument("--classifier-name", default=None, help="which head of a multi-head (grid) checkpoint")
    parser.add_argument("--label-names", default=None, help="comma-separated class names (default: CXR-LT 40 for 40)")
    parser.add_argument("--n-last-blocks", type=int, default=4, help="blocks read by a linear-probe head")
    parser.add_argument("--num-heads", type=int, default=8, help="cross-attention heads (official GLoRI: 8)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")


def _run_glori(args: argparse.Namespace) -> Path:
    names = args.label_names.split(",") if args.label_names else None
    return convert_glori_file(args.src, args.out_dir, args.backbone, args.classifier_name, names,
                              args.n_last_blocks, args.num_heads, args.overwrite)


def convert_mgca_file(
    src: Path, out_dir: Path, preset: str | None = None, tokenizer_dir: Path | None = None, overwrite: bool = False
) -> Path:
    """Convert an official MGCA Lightning checkpoint (`vit_base.ckpt`, `resnet_50.ckpt`) into an
    `MGCAModel.save_pretrained` folder; the preset comes from `hyper_parameters.img_encoder` unless given.

    The checkpoint loads with `weights_only=True` (its hyper-parameters are plain Python values). `out_dir` also
    gets the image processor (the official evaluation transform: longer side to 256, black padding to 256 x 256,
    centre 224 crop, no per-image min-max, mean = std = 0.5) and, with
    `tokenizer_dir` (e.g. a local Bio_ClinicalBERT), an `MGCAProcessor` with the official text cleaning. The
    folder is reloaded and its embeddings compared with the converted model's before returning.
    """
    import torch

    from cxrfm.modeling.mgca import MGCAModel, MGCAProcessor
    from cxrfm.modeling.mgca.convert_mgca import convert_mgca_checkpoint
    from cxrfm.processing import CXRImageProcessor

    src, out_dir = Path(src), Path(out_dir)
    _refuse_non_empty(out_dir, overwrite)
    try:
        config, state_dict = convert_mgca_checkpoint(load_checkpoint(src), preset)
    except ValueError as error:
        raise ValueError(f"{src}: {error}") from error
    model = MGCAModel(config).eval()
    model.load_state_dict(state_dict, strict=True)
    model.save_pretrained(out_dir)
    size = config.image_size
    letterbox = size * 8 // 7  # 256 for the released 224-px encoders
    image_processor = CXRImageProcessor(
        size={"longest_edge": letterbox}, do_pad=True, pad_size=letterbox, crop_size={"height": size, "width": size},
        do_minmax_rescale=False, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        MGCAProcessor(image_processor, tokenizer, clean_text=True, max_length=112).save_pretrained(out_dir)
    else:
        image_processor.save_pretrained(out_dir)

    reloaded = MGCAModel.from_pretrained(out_dir).eval()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, size, size, generator=generator)
    input_ids = torch.randint(1000, config.text_config.vocab_size, (2, 8), generator=generator)
    with torch.inference_mode():
        expected, got = model(pixel_values, input_ids, return_loss=False), reloaded(pixel_values, input_ids, return_loss=False)
    if not (torch.equal(expected.image_embeds, got.image_embeds) and torch.equal(expected.text_embeds, got.text_embeds)):
        raise RuntimeError(f"Reloaded {out_dir} gives different embeddings from the converted checkpoint {src}.")
    logger.info("Converted %s (%s, %d tensors) -> %s", src, config.vision_backbone, len(state_dict), out_dir)
    return out_dir


def _add_mgca_arguments(parser: argparse.ArgumentParser) -> None:
    from cxrfm.modeling.mgca import MGCA_PRESETS

    parser.add_argument("src", type=Path, help="official MGCA Lightning .ckpt (read with torch.load(weights_only=True))")
    parser.add_argument("out_dir", type=Path, help="output folder for MGCAModel.save_pretrained")
    parser.add_argument("--preset", choices=sorted(MGCA_PRESETS), default=None,
                        help="architecture preset (default: from hyper_parameters.img_encoder)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder saved into an MGCAProcessor")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")


def _run_mgca(args: argparse.Namespace) -> Path:
    return convert_mgca_file(args.src, args.out_dir, args.preset, args.tokenizer, args.overwrite)


def convert_dinov2_hf_file(src: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Convert a transformers `Dinov2Model` folder (e.g. RAD-DINO) into a `CheXFoundModel.save_pretrained` folder
    with identical outputs (checked before saving). The source's image mean/std, when it has a preprocessor, go
    into the saved `CXRImageProcessor`. There are no DINO/iBOT heads to keep; continued pretraining initialises them."""
    import json

    from transformers import Dinov2Model

    from cxrfm.modeling.chexfound.convert_dinov2_hf import convert_dinov2_model
    from cxrfm.processing import CXRImageProcessor

    src, out_dir = Path(src), Path(out_dir)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json (expected a transformers Dinov2Model folder).")
    _refuse_non_empty(out_dir, overwrite)
    model = convert_dinov2_model(Dinov2Model.from_pretrained(src))
    model.save_pretrained(out_dir)
    size = model.config.image_size
    stats = {}
    if (src / "preprocessor_config.json").is_file():
        source = json.loads((src / "preprocessor_config.json").read_text())
        stats = {k: source[k] for k in ("image_mean", "image_std") if k in source}
    CXRImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                      num_channels=model.config.num_channels, **stats).save_pretrained(out_dir)
    return out_dir


def _add_dinov2_hf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="transformers Dinov2Model folder (config.json + weights)")
    parser.add_argument("out_dir", type=Path, help="output folder for the CheXFoundModel save_pretrained")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")


def _run_dinov2_hf(args: argparse.Namespace) -> Path:
    return convert_dinov2_hf_file(args.src, args.out_dir, args.overwrite)


CONVERTERS: dict[str, Converter] = {
    "chexfound": Converter(
        help="CheXFound / DINOv2 teacher, student, SSLMetaArch or bare backbone checkpoint",
        add_arguments=_add_chexfound_arguments, run=_run_chexfound,
        description=convert_chexfound_file.__doc__.split("\n\n")[0],
    ),
    "glori": Converter(
        help="CheXFound GLoRI or linear-probe head (e.g. glori.pth) + a converted backbone folder",
        add_arguments=_add_glori_arguments, run=_run_glori,
        description=convert_glori_file.__doc__.split("\n\n")[0],
    ),
    "mgca": Converter(
        help="MGCA Lightning checkpoint (official vit_base.ckpt / resnet_50.ckpt)",
        add_arguments=_add_mgca_arguments, run=_run_mgca,
        description=convert_mgca_file.__doc__.split("\n\n")[0],
    ),
    "dinov2-hf": Converter(
        help="transformers Dinov2Model folder (RAD-DINO layout) -> CheXFoundModel with identical outputs",
        add_arguments=_add_dinov2_hf_arguments, run=_run_dinov2_hf,
        description=convert_dinov2_hf_file.__doc__.split("\n\n")[0],
    ),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert", help="convert an official checkpoint to a save_pretrained folder",
        description="Convert an official checkpoint into a save_pretrained folder (one sub-command per kind).",
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, converter in CONVERTERS.items():
        sub = kinds.add_parser(kind, help=converter.help, description=converter.description or converter.help)
        converter.add_arguments(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    out_dir = CONVERTERS[args.kind].run(args)
    print(out_dir)  # the folder on stdout, so `cxrfm convert ... | xargs cxrfm card` composes
    return 0
