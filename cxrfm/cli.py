"""The `cxrfm` command line.

    cxrfm convert chexfound SRC.pth OUT_DIR [--preset NAME] [--branch teacher|student] [--overwrite]

`convert <family>` turns an official checkpoint into a `save_pretrained` folder; each family is one
sub-command registered in `_add_convert_commands` (GLoRI heads will be `convert glori`).
"""

import argparse
import logging
import pickle
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SSL_HEADS_FILENAME = "ssl_heads.safetensors"


def load_checkpoint(path: Path) -> dict:
    """`torch.load(path, weights_only=True)` on CPU; anything that needs arbitrary unpickling is refused."""
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) (only tensors and plain containers are "
            f"accepted, never arbitrary pickled objects): {error}"
        ) from error


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

    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"Output folder {out_dir} is not empty; pass --overwrite to replace its files.")
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


def _run_convert_chexfound(args: argparse.Namespace) -> int:
    convert_chexfound_file(
        args.src, args.out_dir, args.preset, args.branch, args.num_attention_heads, args.overwrite
    )
    return 0


def _add_convert_commands(subparsers) -> None:
    from cxrfm.modeling.chexfound.configuration_chexfound import CHEXFOUND_PRESETS

    convert = subparsers.add_parser("convert", help="convert an official checkpoint to a save_pretrained folder")
    families = convert.add_subparsers(dest="family", required=True, metavar="FAMILY")

    chexfound = families.add_parser(
        "chexfound",
        help="CheXFound / DINOv2 teacher, student, SSLMetaArch or bare backbone checkpoint",
        description=convert_chexfound_file.__doc__.split("\n\n")[0],
    )
    chexfound.add_argument("src", type=Path, help="official .pth file (read with torch.load(weights_only=True))")
    chexfound.add_argument("out_dir", type=Path, help="output folder for save_pretrained + ssl_heads.safetensors")
    chexfound.add_argument(
        "--preset", choices=sorted(CHEXFOUND_PRESETS), default=None,
        help="check the checkpoint against this preset (default: infer the config from tensor shapes)",
    )
    chexfound.add_argument("--branch", choices=("teacher", "student"), default="teacher")
    chexfound.add_argument(
        "--num-attention-heads", type=int, default=None,
        help="head count when inferring the config (shapes cannot show it; default hidden_size // 64)",
    )
    chexfound.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    chexfound.set_defaults(func=_run_convert_chexfound)
    _add_convert_glori_command(families)


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
    from cxrfm.modeling.chexfound.modeling_glori import convert_glori_checkpoint, infer_head_config
    from cxrfm.processing.datasets._common import CXR_LT_40

    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"Output folder {out_dir} is not empty; pass --overwrite to replace its files.")
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


def _run_convert_glori(args: argparse.Namespace) -> int:
    names = args.label_names.split(",") if args.label_names else None
    convert_glori_file(args.src, args.out_dir, args.backbone, args.classifier_name, names, args.n_last_blocks,
                       args.num_heads, args.overwrite)
    return 0


def _add_convert_glori_command(families) -> None:
    glori = families.add_parser(
        "glori",
        help="CheXFound GLoRI or linear-probe head (e.g. glori.pth) + a converted backbone folder",
        description=convert_glori_file.__doc__.split("\n\n")[0],
    )
    glori.add_argument("src", type=Path, help="official head .pth (fvcore checkpoint or bare state dict)")
    glori.add_argument("out_dir", type=Path, help="output folder for GLoRIForMultiLabel.save_pretrained")
    glori.add_argument("--backbone", type=Path, required=True, help="CheXFoundModel folder (cxrfm convert chexfound)")
    glori.add_argument("--classifier-name", default=None, help="which head of a multi-head (grid) checkpoint")
    glori.add_argument("--label-names", default=None, help="comma-separated class names (default: CXR-LT 40 for 40)")
    glori.add_argument("--n-last-blocks", type=int, default=4, help="blocks read by a linear-probe head")
    glori.add_argument("--num-heads", type=int, default=8, help="cross-attention heads (official GLoRI: 8)")
    glori.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    glori.set_defaults(func=_run_convert_glori)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrfm", description="Chest X-ray foundation models (cxrfm) tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cxrfm` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"cxrfm {args.command} {getattr(args, 'family', '')}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
