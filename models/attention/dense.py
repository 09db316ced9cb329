"""Dense attention through ``torch.nn.functional.scaled_dot_product_attention``.

An optional ``mask`` (``BlockMask``: block lists, e.g. block diffusion's) replaces the causal /
bidirectional choice of ``config.causal``. With as many queries as keys and the Triton backend
(CUDA, see ``models.attention.block_sparse.resolve_backend``) the lists go to the block-sparse op;
otherwise SDPA runs with the same mask expanded token by token (``BlockMask.dense``), the reference
path, and on the CPU the faster one (6x at 4-token blocks, 2x at 16 over the op's gather path, T = 128).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention.block_sparse import BlockMask, block_sparse_attention, resolve_backend
from models.attention.registry import register_attention
from models.config import ModelConfig


@register_attention("dense")
class DenseAttention(nn.Module):
    supports_kv_cache = True
    supports_mask = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.causal = config.causal
        self.dropout = config.attn_dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
                mask: BlockMask | None = None) -> torch.Tensor:
        if mask is not None:
            return self.masked(q, k, v, mask)
        Tq, Tk = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        p = self.dropout if self.training else 0.0
        if self.causal and Tq != Tk:
            # Queries are the last Tq of Tk positions (decoding with a KV cache): query i sits at
            # absolute position Tk - Tq + i and sees keys 0 .. Tk - Tq + i.
            qpos = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
            mask = torch.arange(Tk, device=q.device)[None, :] <= qpos  # (Tq, Tk)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p, enable_gqa=gqa)

    def masked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask) -> torch.Tensor:
        """q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) under ``mask`` -> (B, Hq, Tq, D). Attention dropout is
        applied on the SDPA path only (the block-sparse op has none)."""
        B, Hkv, Tq, Tk = q.shape[0], k.shape[1], q.shape[2], k.shape[2]
        if (mask.q_len, mask.k_len) != (Tq, Tk):
            raise ValueError(f"attention mask is for {mask.q_len} queries over {mask.k_len} keys, got {Tq} over {Tk}")
        if Tq == Tk and resolve_backend(None, q.device) == "triton":
            return block_sparse_attention(q, k, v, *mask.lists(B, Hkv), block_size=mask.block_size, causal=False)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), dropout_p=p,
                                              enable_gqa=q.shape[1] != Hkv)
