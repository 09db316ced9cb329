"""The shared backbone: one transformer for the autoregressive and the masked-diffusion model.

Features: pre-norm blocks with RMSNorm, rotary position embeddings (RoPE), SwiGLU MLP, optional
grouped-query attention, tied input/output embeddings, no biases. Attention is pluggable through
``models.attention`` (dense SDPA, sliding window, NSA, top-k block attention).

Deviations from nanoGPT: no learned position embeddings (RoPE), no biases, RMSNorm, SwiGLU, and
the causal mask is a config flag: ``causal=True`` is the AR model, ``causal=False`` the diffusion
model. The class is never copied to flip causality. The model knows nothing of objectives: it maps
token ids to logits; ``models.objectives`` decides what the inputs and targets are. An objective whose
attention is neither causal nor bidirectional (block diffusion) passes per call the RoPE
``positions`` (they may repeat) and a ``mask`` (``BlockMask``: block lists), which the attention kind
applies instead of the flag (dense attention only).

Shapes: B batch, T sequence, C = d_model, H query heads, G key/value heads, D = C // H head dim,
V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import build_attention
from models.attention.block_sparse import BlockMask
from models.attention.registry import attention_params
from models.config import ModelConfig


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (seq_len, head_dim // 2), in float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) of x (B, H, T, D) by the angles of cos/sin (T, D/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


@dataclass
class KVCache:
    """Keys and values of the positions decoded so far, one (k, v) pair per layer."""

    layers: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)

    @property
    def length(self) -> int:
        return 0 if not self.layers or self.layers[0] is None else self.layers[0][0].shape[2]

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions only (block diffusion caches clean blocks, never the
        noised block that was decoded with them)."""
        self.layers = [None if kv is None else (kv[0][:, :, :length], kv[1][:, :, :length]) for kv in self.layers]


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C, H, G, D = config.d_model, config.n_head, config.n_kv_head, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = H, G, D
        self.wq = nn.Linear(C, H * D, bias=False)
        self.wk = nn.Linear(C, G * D, bias=False)
        self.wv = nn.Linear(C, G * D, bias=False)
        self.wo = nn.Linear(H * D, C, bias=False)
        self.core = build_attention(config)
        self.drop = nn.Dropout(config.resid_dropout)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, mask: BlockMask | None = None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, G, T, D)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, G, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if not getattr(self.core, "supports_kv_cache", False):
                raise ValueError(f"attention kind {type(self.core).__name__} does not support a KV cache")
            past = cache.layers[layer] if layer < len(cache.layers) else None
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            if layer < len(cache.layers):
                cache.layers[layer] = (k, v)
            else:
                cache.layers.append((k, v))
        if mask is None:
            y = self.core(q, k, v, x)  # (B, H, T, D)
        elif getattr(self.core, "supports_mask", False):
            y = self.core(q, k, v, x, mask=mask)  # (B, H, T, D)
        else:
            raise ValueError(f"attention kind {type(self.core).__name__} takes no attention mask (use dense)")
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.drop(self.wo(y))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.d_model, config.d_ff, bias=False)  # gate
        self.w3 = nn.Linear(config.d_model, config.d_ff, bias=False)  # up
        self.w2 = nn.Linear(config.d_ff, config.d_model, bias=False)  # down
        self.drop = nn.Dropout(config.resid_dropout)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = SelfAttention(config)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        x = x + self.attn(self.norm1(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Token ids (B, T) -> logits (B, T, V). ``config.causal`` selects AR or bidirectional."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.embd_dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        cos, sin = rope_tables(config.seq_len, config.head_dim, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # RMSNorm weights keep their ones
            scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith(("wo.weight", "w2.weight")) else 1.0
            nn.init.normal_(p, mean=0.0, std=std * scale)

    @property
    def supports_kv_cache(self) -> bool:
        return all(getattr(b.attn.core, "supports_kv_cache", False) for b in self.blocks)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: BlockMask | None = None, logits_to_keep: int | None = None) -> torch.Tensor:
        """Logits (B, T, V) of ids ``idx`` (B, T).

        Optional, for objectives whose attention is neither causal nor bidirectional (block diffusion):
        ``positions`` (T,) or (B, T) long, the RoPE positions of the tokens (default: ``cache.length``
        onwards; they may repeat); ``mask`` the attention mask (``BlockMask``, replaces the config's
        causal flag; dense attention only); ``logits_to_keep``: logits of the last that many tokens only,
        (B, logits_to_keep, V).
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            if start + T > self.config.seq_len:
                raise ValueError(f"sequence of {start + T} tokens exceeds seq_len={self.config.seq_len}")
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, D/2)
        else:
            cos, sin = self._rope_at(positions)  # (T, D/2) or (B, 1, T, D/2)
        x = self.drop(self.wte(idx))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, mask)
        if logits_to_keep is not None:
            x = x[:, T - logits_to_keep :]  # (B, logits_to_keep, C)
        x = self.norm(x)
        return F.linear(x, self.wte.weight)  # (B, T, V), tied head

    def _rope_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin at explicit positions: (T,) -> (T, D/2); (B, T) -> (B, 1, T, D/2) (broadcast over heads)."""
        if int(positions.max()) >= self.config.seq_len or int(positions.min()) < 0:
            raise ValueError(f"positions must lie in [0, seq_len={self.config.seq_len})")
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        return (cos, sin) if positions.dim() == 1 else (cos[:, None], sin[:, None])

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` leaves out the (tied) token embedding matrix."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n


def count_params(config: ModelConfig, non_embedding: bool = False) -> int:
    """Parameter count in closed form, without building the model (``Transformer.num_params`` agrees; tested).

    Per block: two RMSNorms 2C, q and o projections 2 C Hq D, k and v 2 C Hkv D, SwiGLU 3 C F, and
    the attention kind's own weights; then the final RMSNorm C and the tied embedding V C (left out
    with ``non_embedding``: Kaplan's N, the N of the compute formula)."""
    C, D, F_ = config.d_model, config.head_dim, config.d_ff
    block = 2 * C + 2 * C * config.n_head * D + 2 * C * config.n_kv_head * D + 3 * C * F_ + attention_params(config)
    n = config.n_layer * block + C
    return n if non_embedding else n + config.vocab_size * C

