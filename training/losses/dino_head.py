"""DINO / iBOT projection head: MLP -> L2 normalisation -> weight-normalised prototype layer.

    h(x) = W_proto( g * v / ||v|| ) applied to  u / ||u||_2,   u = MLP(x)

Facts from facebookresearch/dinov2 (identical in RPIDIAL/CheXFound) `layers/dino_head.py`: the MLP is
Linear(D -> hidden) -> GELU -> [Linear(hidden -> hidden) -> GELU] x (n_layers - 2) -> Linear(hidden -> bottleneck),
Linear weights trunc-normal(0.02) with zero bias; the L2 normalisation uses eps 1e-6 in fp16 and 1e-12 otherwise;
the prototype layer is `weight_norm(Linear(bottleneck, K, bias=False))` with the magnitude g initialised to 1 and
trainable, and v left at PyTorch's default Linear init. CheXFound: K = 131,072 for both heads, bottleneck 384 (DINO)
and 256 (iBOT), hidden 2048, 3 layers. Parameter names (`mlp.{0,2,4}`, `last_layer.weight_g`, `last_layer.weight_v`)
are the official ones, so heads converted by `cxrfm convert chexfound` load strictly.
"""

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight w_k = g_k v_k / ||v_k||_2 per output row k (`torch.nn.utils.weight_norm`, dim 0),
    stored as `weight_g` `(K, 1)` and `weight_v` `(K, D)` like the official checkpoints."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        reference = nn.Linear(in_features, out_features, bias=False)  # PyTorch's default init for v
        self.weight_v = nn.Parameter(reference.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """h(x) of the module docstring.

    Args:
        in_dim: backbone width D.
        out_dim: number of prototypes K.
        hidden_dim: MLP width (2048).
        bottleneck_dim: width before the prototypes (DINO 384 / iBOT 256 in CheXFound; DINOv2 default 256).
        n_layers: MLP depth (3).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"DINOHead.n_layers must be >= 1, got {n_layers}.")
        widths = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., D)` -> `(..., K)` prototype scores."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return self.last_layer(F.normalize(x, p=2, dim=-1, eps=eps))


def head_sizes_from_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, int] | None:
    """DINOHead keyword arguments read from the shapes of `prefix`-ed tensors (`dino_head.`), None if absent."""
    linear_weights = sorted(
        (int(k[len(prefix) + 4:].split(".")[0]), v)
        for k, v in state_dict.items()
        if k.startswith(prefix + "mlp.") and k.endswith(".weight")
    )
    if not linear_weights or prefix + "last_layer.weight_v" not in state_dict:
        return None
    first, last = linear_weights[0][1], linear_weights[-1][1]
    return dict(
        in_dim=first.shape[1],
        out_dim=state_dict[prefix + "last_layer.weight_v"].shape[0],
        hidden_dim=first.shape[0] if len(linear_weights) > 1 else last.shape[0],
        bottleneck_dim=last.shape[0],
        n_layers=len(linear_weights),
    )


__all__ = ["DINOHead", "WeightNormLinear", "head_sizes_from_state_dict"]
