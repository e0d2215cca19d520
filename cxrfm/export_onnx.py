"""ONNX export of a CheXFound backbone or a GLoRI classifier folder, with a dynamic batch size and image size.

What is exported (`outputs`):

==========  ==========================  ===========================================================================
outputs     folder                      ONNX outputs
==========  ==========================  ===========================================================================
`pooled`    CheXFound or GLoRI          `pooler_output` (B, D): the final-normed CLS token
`last4`     CheXFound or GLoRI          `patch_tokens` (B, N, n*D), `cls_tokens` (B, n*D): the last n blocks'
                                        final-normed tokens concatenated along channels (GLoRI's input, n = 4)
`logits`    GLoRI                       `logits` (B, C) and, for the GLoRI head, `attention_maps` (B, C, h, w)
==========  ==========================  ===========================================================================

The input is `pixel_values` (B, C, H, W), normalised as the folder's `CXRImageProcessor` does. B is dynamic,
and so are H and W (any multiples of the patch size).

Why the position-embedding interpolation is restated here: CheXFound resamples its position embeddings for a
non-native grid with `F.interpolate(..., scale_factor=(grid + 0.1) / stored_grid)`. `torch.export` specialises a
Python float scale factor to the value of the example input, so the exported graph would be right at one image size
only. `exportable_pos_embed_for_grid` computes the same bicubic resampling as two (grid, stored_grid) weight matrices
built from tensor ops on the symbolic grid size, and keeps the stored embeddings exactly at the native grid (as
`CheXFoundVisionTransformer.pos_embed_for_grid` does). It replaces the method on the model instance only while
exporting (`_exportable_positions`).

The exporter is `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). Every export proves itself before
it returns: onnxruntime runs the file at two batch sizes and image sizes and must match torch within `atol`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

OUTPUT_CHOICES = ("pooled", "last4", "logits")
OUTPUT_NAMES = {
    "pooled": ("pooler_output",),
    "last4": ("patch_tokens", "cls_tokens"),
    "logits": ("logits", "attention_maps"),
}
# Coefficient A of the cubic convolution kernel in torch's upsample_bicubic2d.
_CUBIC_A = -0.75


def cubic_kernel(distance: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with A = -0.75 (torch's bicubic), zero at |distance| >= 2."""
    a, x = _CUBIC_A, distance.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _size_tensor(size, like: torch.Tensor) -> torch.Tensor:
    """A (possibly symbolic) size as a float32 tensor `(1,)`, so that arithmetic on it stays in the graph."""
    return torch.arange(size, device=like.device, dtype=torch.float32)[-1:] + 1


def bicubic_resample_matrix(out_size, in_size: int, offset, like: torch.Tensor) -> torch.Tensor:
    """(out_size, in_size) matrix W such that W @ x resamples x along one axis exactly as
    `F.interpolate(mode="bicubic", align_corners=False, antialias=False)` with `scale_factor = (out_size + offset) /
    in_size` (offset > 0, CheXFound's rule) or `size=out_size` (offset = 0). With `out_size == in_size` and offset 0
    it is the identity exactly (every source coordinate is an integer, the kernel there is 1, 0, 0, 0).

    `out_size` may be a symbolic size during export and `offset` a tensor: the scale is computed from tensors, never
    from a Python float, so the exported graph holds for every size. Few operators on purpose: export time grows with
    every operator on a symbolic shape.
    """
    rows = torch.arange(out_size, device=like.device, dtype=torch.float32)
    # torch maps output pixel i to input coordinate (i + 0.5) / scale - 0.5 (half-pixel centres, no clamp for cubic),
    # which lies in [-0.5, in_size - 0.5]: its four taps lie in [-2, in_size + 1].
    source = (rows + 0.5) * (in_size / (_size_tensor(out_size, like) + offset)) - 0.5
    taps = torch.arange(-2, in_size + 2, device=like.device, dtype=torch.float32)
    weights = cubic_kernel(source[:, None] - taps[None, :])  # (out_size, in_size + 4)
    # Taps beyond the border read the edge pixel (torch's upsample_get_value_bounded): fold them onto the edges.
    first = weights[:, :3].sum(dim=1, keepdim=True)
    last = weights[:, -3:].sum(dim=1, keepdim=True)
    return torch.cat([first, weights[:, 3:-3], last], dim=1) if in_size > 1 else first + last - weights[:, 2:3]


def exportable_pos_embed_for_grid(vit, height, width, dtype: torch.dtype) -> torch.Tensor:
    """Drop-in for `CheXFoundVisionTransformer.pos_embed_for_grid` that exports with a symbolic grid size.

    Returns `(1, 1 + height * width, D)`: the CLS slot, then the patch embeddings resampled bicubically (separably,
    as `F.interpolate` does) to the `height x width` grid.
    """
    patch_pos_embed = vit.pos_embed[:, 1:].float()
    stored = vit.patch_embed.grid_size[0]
    dim = patch_pos_embed.shape[-1]
    grid = patch_pos_embed.reshape(stored, stored * dim)
    # At the native grid (both sides) CheXFound uses the stored embeddings unresampled. Offset 0 there makes both
    # matrices the identity, with a tensor condition so that the graph keeps both cases.
    native = (_size_tensor(height, grid) == stored) & (_size_tensor(width, grid) == stored)
    offset = vit.interpolate_offset * (~native).to(torch.float32)
    rows = bicubic_resample_matrix(height, stored, offset, grid)  # (h, M)
    columns = bicubic_resample_matrix(width, stored, offset, grid)  # (w, M)
    resampled = torch.matmul(columns, (rows @ grid).reshape(-1, stored, dim))  # (h, w, D)
    return torch.cat([vit.pos_embed[:, :1].float(), resampled.reshape(1, -1, dim)], dim=1).to(dtype)


@contextlib.contextmanager
def _exportable_positions(backbone):
    """Route the backbone's position embeddings through `exportable_pos_embed_for_grid` while exporting."""
    vit = backbone.vit
    vit.pos_embed_for_grid = types.MethodType(exportable_pos_embed_for_grid, vit)
    try:
        yield
    finally:
        del vit.pos_embed_for_grid  # back to the class method


class PooledFeatures(nn.Module):
    """pixel_values -> pooler_output (B, D)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values).pooler_output


class LastBlockFeatures(nn.Module):
    """pixel_values -> (patch_tokens (B, N, n*D), cls_tokens (B, n*D)), the GLoRI head's input."""

    def __init__(self, backbone, n_last_blocks: int):
        super().__init__()
        self.backbone = backbone
        self.n_last_blocks = n_last_blocks

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from cxrfm.modeling.chexfound.modeling_glori import concat_last_blocks

        return concat_last_blocks(self.backbone.get_intermediate_layers(pixel_values, n=self.n_last_blocks))


class ClassifierOutputs(nn.Module):
    """pixel_values -> logits (B, C) [, attention_maps (B, C, h, w) for the GLoRI head]."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.with_attention = model.config.head == "glori"

    def forward(self, pixel_values: torch.Tensor):
        outputs = self.model(pixel_values=pixel_values, output_attentions=self.with_attention)
        return (outputs.logits, outputs.attention_maps) if self.with_attention else (outputs.logits,)


def module_backbone(module: nn.Module):
    """The CheXFoundModel inside an export wrapper."""
    return module.model.backbone if isinstance(module, ClassifierOutputs) else module.backbone


def load_exportable(folder: str | Path, outputs: str | None = None, n_last_blocks: int = 4):
    """Load a saved CheXFound or GLoRI folder and wrap it for export.

    Returns:
        `(module, output_names, config)`: an eval-mode module taking `pixel_values`, its output names, and the
        backbone config (patch size, native image size, channels).
    """
    from transformers import AutoConfig

    from cxrfm.modeling import CheXFoundModel, GLoRIForMultiLabel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a CheXFoundModel or GLoRIForMultiLabel folder.")
    model_type = AutoConfig.from_pretrained(folder).model_type
    if model_type == "chexfound":
        outputs = outputs or "pooled"
        backbone, classifier = CheXFoundModel.from_pretrained(folder).eval(), None
    elif model_type == "chexfound_glori":
        outputs = outputs or "logits"
        classifier = GLoRIForMultiLabel.from_pretrained(folder).eval()
        backbone = classifier.backbone
        n_last_blocks = classifier.config.n_last_blocks
    else:
        raise ValueError(
            f"{folder}: model_type {model_type!r} cannot be exported; expected 'chexfound' (CheXFoundModel) or "
            "'chexfound_glori' (GLoRIForMultiLabel)."
        )
    if outputs not in OUTPUT_CHOICES:
        raise ValueError(f"export_onnx: outputs must be one of {OUTPUT_CHOICES}, got {outputs!r}.")
    if outputs == "pooled":
        module = PooledFeatures(backbone)
    elif outputs == "last4":
        if not 1 <= n_last_blocks <= backbone.config.num_hidden_layers:
            raise ValueError(
                f"export_onnx: n_last_blocks={n_last_blocks} must be in [1, {backbone.config.num_hidden_layers}]."
            )
        module = LastBlockFeatures(backbone, n_last_blocks)
    elif classifier is None:
        raise ValueError(f"{folder}: outputs='logits' needs a GLoRIForMultiLabel folder; this is a CheXFound backbone.")
    else:
        module = ClassifierOutputs(classifier)
    names = OUTPUT_NAMES[outputs]
    if isinstance(module, ClassifierOutputs) and not module.with_attention:
        names = names[:1]  # the linear probe has no attention maps
    return module.eval(), names, backbone.config


# Batch, height and width are symbolic in the graph.
DYNAMIC_SHAPES = {
    "pixel_values": {0: torch.export.Dim("batch_size", min=1, max=4096), 2: torch.export.Dim.DYNAMIC,
                     3: torch.export.Dim.DYNAMIC}
}


def _metadata(module, output_names, config) -> dict[str, str]:
    metadata = {
        "cxrfm_outputs": ",".join(output_names),
        "image_size": str(config.image_size),
        "patch_size": str(config.patch_size),
    }
    if isinstance(module, ClassifierOutputs):
        id2label = module.model.config.id2label
        metadata["id2label"] = json.dumps({str(index): name for index, name in sorted(id2label.items())})
    return metadata


def export_onnx(
    folder: str | Path,
    output: str | Path,
    outputs: str | None = None,
    n_last_blocks: int = 4,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> dict:
    """Export a CheXFound or GLoRI folder to one ONNX file and check it against torch with onnxruntime.

    Args:
        folder: a `CheXFoundModel` or `GLoRIForMultiLabel` `save_pretrained` folder.
        output: the `.onnx` file to write (weights embedded).
        outputs: `"pooled"`, `"last4"` or `"logits"` (see the module docstring); default `"pooled"` for a backbone
            folder, `"logits"` for a GLoRI folder.
        n_last_blocks: blocks concatenated by `"last4"` on a backbone folder (a GLoRI folder uses its own).
        atol: tolerance of the onnxruntime-vs-torch check (the example input, and batch 1 one patch larger).
        overwrite: replace an existing `output`.

    Returns:
        `{"path", "outputs", "max_abs_diff"}` (the check's largest difference per output).
    """
    import onnx
    import onnxruntime

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it.")
    if output.suffix != ".onnx":
        raise ValueError(f"{output}: the output file name must end in .onnx.")
    module, output_names, config = load_exportable(folder, outputs, n_last_blocks)
    if config.interpolate_antialias:
        raise ValueError(
            f"{folder}: interpolate_antialias=True is not supported by the ONNX export (its position-embedding "
            "resampling is restated for torch's non-antialiased bicubic only)."
        )
    side = config.image_size
    # Batch 2: torch.export specialises a dimension whose example value is 1.
    example = torch.randn(2, config.num_channels, side, side, generator=torch.Generator().manual_seed(0))
    output.parent.mkdir(parents=True, exist_ok=True)

    with _exportable_positions(module_backbone(module)), torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(output),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=list(output_names),
            dynamic_shapes=DYNAMIC_SHAPES,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(output))
    for key, value in _metadata(module, output_names, config).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(output))

    # The check runs the example and a second batch size and image size (one patch larger, so the position
    # embeddings are resampled), against the unpatched torch model.
    other = torch.randn(1, config.num_channels, side + config.patch_size, side + config.patch_size,
                        generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    diffs = dict.fromkeys(output_names, 0.0)
    for pixel_values in (example, other):
        with torch.no_grad():
            expected = module(pixel_values)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(list(output_names), {"pixel_values": pixel_values.numpy()})
        for name, value, reference in zip(output_names, got, expected):
            diffs[name] = max(diffs[name], float(np.abs(value - reference.numpy()).max()))
    if any(diff > atol for diff in diffs.values()):
        raise RuntimeError(f"ONNX export {output} differs from torch beyond atol={atol}: max abs diff {diffs}.")
    logger.info("Exported %s (%s) -> %s; onnxruntime vs torch max abs diff %s", folder, ",".join(output_names),
                output, diffs)
    return {"path": output, "outputs": list(output_names), "max_abs_diff": diffs}


__all__ = [
    "OUTPUT_CHOICES",
    "bicubic_resample_matrix",
    "exportable_pos_embed_for_grid",
    "export_onnx",
    "load_exportable",
]
