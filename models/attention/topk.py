"""Top-k block attention (MoBA / InfLLM-V2 style) on the block-sparse op.

Each query block picks the ``attn_topk`` key blocks whose mean-pooled key scores highest against
the query block's summed queries (summed over the query heads of a GQA group: one list per group);
its own block is always picked and counts towards k. Selected blocks are attended to in one
softmax (token-wise causal mask inside the op). No extra parameters; the selection is computed
without gradient, so q and k learn through the attention only.

Causal (``config.causal=True``): only blocks ``<= current`` are candidates, and a block is scored by
the queries ``i*L - L + 1 .. i*L`` (ending at its first token; see ``query_block_sums``) so that no
token's selection depends on later tokens. Bidirectional: every block is a candidate, scored by the
block's own queries.

Config fields: ``attn_block`` (default 64) block size in tokens, ``attn_topk`` (default 4) blocks
per query block including the current one. ``attn_topk >= ceil(T / attn_block)`` gives dense attention.
Attention dropout is not applied.
"""

from __future__ import annotations

import torch
from torch import nn

from models.attention.block_sparse import block_means, block_sparse_attention, query_block_sums, topk_block_lists
from models.attention.registry import register_attention
from models.config import ModelConfig


@register_attention("topk")
class TopKBlockAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.causal = config.causal
        self.block_size = config.attn_block
        self.topk = max(1, config.attn_topk)

    @torch.no_grad()
    def block_lists(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lists (B, Hkv, N, min(topk, N)) int32 and counts (B, Hkv, N) int32 for q (B, Hq, T, D), k (B, Hkv, T, D)."""
        B, Hkv, T, D = k.shape
        q_sum = query_block_sums(q.float(), self.block_size, self.causal)  # (B, Hq, N, D)
        q_sum = q_sum.view(B, Hkv, -1, q_sum.shape[2], D).sum(2)  # (B, Hkv, N, D), group-shared
        k_mean = block_means(k.float(), self.block_size)  # (B, Hkv, N, D)
        scores = q_sum @ k_mean.transpose(-1, -2)  # (B, Hkv, N, N)
        n = scores.shape[-1]
        blocks = torch.arange(n, device=q.device)
        current = blocks[:, None] == blocks[None, :]
        allowed = blocks[None, :] <= blocks[:, None] if self.causal else None
        return topk_block_lists(scores, self.topk, allowed=allowed, forced=current)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        indices, counts = self.block_lists(q, k)
        return block_sparse_attention(
            q, k, v, indices, counts, block_size=self.block_size, causal=self.causal
        )  # (B, Hq, T, D)
