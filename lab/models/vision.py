"""Pre-norm ViT covering CLIP's vision tower (LLaVA) and the EVA/BLIP-2 one (BLIP-2, InstructBLIP).

The two differ only in a few switches, so one module with a config beats two near-copies:
CLIP has full q/k/v biases, a LayerNorm before the encoder, no patch-conv bias, and LLaVA reads
the hidden state of an inner layer; BLIP-2 has q and v biases only and a LayerNorm after the
last layer, applied to every token.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lab.config import Config, ConfigError, check_choice, check_range
from lab.models.attention import ATTN_IMPLS, attention

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
    "relu": F.relu,
}


@dataclasses.dataclass(frozen=True)
class Features:
    """The shape of the features a vision encoder hands a connector: `b count dim`, a CLS token
    first when `cls_token`, then the `grid × grid` patches in reading order (row by row). A
    connector that reads positions (pools the grid, say) needs all three."""

    dim: int
    grid: int
    cls_token: bool

    @property
    def count(self) -> int:
        return self.grid**2 + self.cls_token


@dataclasses.dataclass
class VisionConfig(Config):
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    qkv_bias: str = "qv"  # "qv" (BLIP-2: no key bias), "qkv" (CLIP) or "none"
    patch_bias: bool = True
    pre_norm: bool = False  # CLIP's pre_layrnorm before the first layer
    post_norm: bool = True  # BLIP-2's post_layernorm over all output tokens
    feature_layer: int = -1  # which hidden state to return: 0 = embeddings, -1 = last layer
    drop_cls: bool = False  # LLaVA's "default" select strategy drops the CLS token
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        for key in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            check_range(f"vision.{key}", getattr(self, key), 1)
        check_choice("vision.qkv_bias", self.qkv_bias, ("qv", "qkv", "none"))
        check_choice("vision.hidden_act", self.hidden_act, tuple(ACTIVATIONS))
        check_choice("vision.attn_impl", self.attn_impl, ATTN_IMPLS)
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if not -self.num_layers - 1 <= self.feature_layer <= self.num_layers:
            raise ConfigError(
                f"vision.feature_layer {self.feature_layer} outside [-{self.num_layers + 1}, {self.num_layers}]"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_features(self) -> int:
        """Tokens per image handed to the connector."""
        return self.features.count

    @property
    def features(self) -> Features:
        """What the encoder hands a connector, per image."""
        return Features(self.hidden_size, self.image_size // self.patch_size, cls_token=not self.drop_cls)

    @property
    def layers_to_run(self) -> int:
        """Layers needed for `feature_layer`: later ones cannot change the selected hidden state."""
        return self.feature_layer % (self.num_layers + 1)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads, self.impl = cfg.num_heads, cfg.attn_impl
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias == "qkv")
        if cfg.qkv_bias == "qv":
            # A key bias adds q·b_k to every score of a query: softmax ignores it, so BLIP-2 omits it.
            self.q_bias = nn.Parameter(torch.zeros(d))
            self.v_bias = nn.Parameter(torch.zeros(d))
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.qkv.bias
        if hasattr(self, "q_bias"):
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        out = attention(q, k, v, impl=self.impl)
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """`(1 + grid²) d` position table: zeros for CLS, then sin/cos of row and column per patch."""
    quarter = dim // 4
    freq = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    parts = [f(rearrange(a, "h w -> (h w) 1") * freq) for a in (rows, cols) for f in (torch.sin, torch.cos)]
    table = torch.zeros(1 + grid * grid, dim)
    table[1:, : 4 * quarter] = torch.cat(parts, dim=1)
    return table


class VisionEncoder(nn.Module):
    """pixels `b 3 H W` -> features `b n dv` (n = patches, plus CLS unless `drop_cls`)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.randn(d) * 0.02)
        # 2-D sine-cosine start (as in MAE): from-scratch models see where a patch is from step 0.
        self.pos_embed = nn.Parameter(sincos_2d(cfg.image_size // cfg.patch_size, d))
        self.pre_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.pre_norm else None
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_layers))
        self.post_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.post_norm else None

    def check_pixels(self, pixel_values: torch.Tensor) -> None:
        s = self.cfg.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"pixel_values must have shape [batch, 3, {s}, {s}] for this model's image_size={s}, "
                f"got {list(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be floating point, normalised as the model was trained (lab.data.pixels), "
                f"got {pixel_values.dtype}: raw 0-255 images need normalising first"
            )
        if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values).all():  # compiled: no host sync
            bad = (~torch.isfinite(pixel_values)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"pixel_values hold NaN or infinite values (batch rows {bad[:5]})")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixel_values)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        x = rearrange(x, "b d gh gw -> b (gh gw) d")
        cls = self.cls_token.expand(x.shape[0], 1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for layer in self.layers[: self.cfg.layers_to_run]:
            x = layer(x)
        if self.post_norm is not None:
            x = self.post_norm(x)
        return x[:, 1:] if self.cfg.drop_cls else x
