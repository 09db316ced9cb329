"""Dense attention through ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention.registry import register_attention
from models.config import ModelConfig


@register_attention("dense")
class DenseAttention(nn.Module):
    supports_kv_cache = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.causal = config.causal
        self.dropout = config.dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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
