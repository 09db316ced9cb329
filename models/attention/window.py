"""Sliding-window attention on the block-sparse op.

Causal (``config.causal=True``): query ``i`` sees keys ``i - window < j <= i``. Bidirectional:
``|i - j| < window`` (symmetric). The block lists are the key blocks a window can reach from each
query block (``window_block_lists``); the exact window is applied token-wise inside the op.

Config fields: ``attn_window`` (default 128) is the window in tokens, ``attn_block`` (default 64)
the block size of the lists. ``window >= seq_len`` gives dense attention. No parameters; attention
dropout is not applied (``config.resid_dropout`` still acts on the block's output).
"""

from __future__ import annotations

import torch
from torch import nn

from models.attention.block_sparse import block_sparse_attention, window_block_lists
from models.attention.registry import register_attention
from models.config import ModelConfig


@register_attention("window")
class SlidingWindowAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.causal = config.causal
        self.block_size = config.attn_block
        self.window = config.attn_window

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, Hkv, T, _ = k.shape
        indices, counts = window_block_lists(T, self.block_size, self.window, self.causal, q.device)
        n = indices.shape[2]
        return block_sparse_attention(
            q, k, v, indices.expand(B, Hkv, n, -1), counts.expand(B, Hkv, n),
            block_size=self.block_size, causal=self.causal, window=self.window,
        )  # (B, Hq, T, D)
