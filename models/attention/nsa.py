"""Native Sparse Attention (NSA, DeepSeek 2025) with block-level selection, on the block-sparse op.

Three branches over the same q, k, v, mixed per head and token by sigmoid gates:

    o = g_cmp * o_cmp + g_slc * o_slc + g_swa * o_swa,    (g_cmp, g_slc, g_swa) = sigmoid(Linear(C, 3*Hq)(x))

* compressed: attention over mean-pooled key/value blocks of ``attn_block`` tokens taken every
  ``attn_stride`` tokens (T / stride compressed tokens; plain PyTorch, it also yields the scores).
  Causal: a compressed block is visible only to queries at or after its last token, and only
  complete blocks exist. Bidirectional: all blocks are visible; the last may be partial (averaged
  over its real tokens).
* selected: block-sparse attention over ``attn_topk`` blocks of ``attn_block`` tokens per query block.
  A block's importance is the compressed attention probability mass that falls on it (compressed
  blocks spread over the blocks they overlap, by overlap fraction), summed over the query heads of
  a GQA group (one list per group) and over the query block's tokens -- causal: over the queries
  ``i*L - L + 1 .. i*L`` ending at the block's first token, so no selection depends on later tokens
  (see ``query_block_sums``). Causal: candidates are blocks ``<= current``; the first, the previous
  and the current block are forced. Bidirectional: all blocks are candidates; the current block is
  forced. Forced blocks count towards ``attn_topk`` (which is raised to their number if smaller).
* sliding window: ``attn_window`` tokens (symmetric when bidirectional), as the ``window`` kind.

Deviations from the paper: block-level (not token-level) selection lists, mean pooling instead of
a learned compression MLP, and the branches share the block's k/v projections.

Config fields: ``attn_block`` (default 64), ``attn_stride`` (default None -> attn_block // 2),
``attn_topk`` (default 4), ``attn_window`` (default 128). Parameters: the gate Linear(C, 3 * Hq),
bias initialised to 0 (all gates 0.5). Attention dropout is not applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention.block_sparse import (
    block_sparse_attention,
    query_block_sums,
    topk_block_lists,
    window_block_lists,
)
from models.attention.block_sparse.naive import masked_softmax
from models.attention.registry import register_attention
from models.config import ModelConfig


def compress_blocks(x: torch.Tensor, length: int, stride: int, causal: bool) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, Nc, D): means of the tokens ``j*stride .. j*stride + length - 1``.

    Causal: complete blocks only, ``Nc = (T - length) // stride + 1`` (0 if T < length).
    Bidirectional: ``Nc = ceil((T - length) / stride) + 1`` blocks covering every token; blocks running
    past T are averaged over their real tokens.
    """
    T = x.shape[2]
    n = (T - length) // stride + 1 if causal else -(-max(T - length, 0) // stride) + 1
    if n <= 0:
        return x.new_zeros(*x.shape[:2], 0, x.shape[3])
    padded = F.pad(x.float(), (0, 0, 0, (n - 1) * stride + length - T))  # fp32 sums, also for bf16 inputs
    sums = padded.unfold(2, length, stride).sum(-1)  # (B, H, Nc, D)
    counts = torch.clamp(T - torch.arange(n, device=x.device) * stride, max=length)
    return (sums / counts[:, None]).to(x.dtype)


def block_overlap(n_compressed: int, length: int, stride: int, block_size: int, seq_len: int,
                  device: torch.device) -> torch.Tensor:
    """(Nc, N) fraction of compressed block j's real tokens that lie in selection block s."""
    c_start = torch.arange(n_compressed, device=device) * stride
    c_end = torch.clamp(c_start + length, max=seq_len)
    b_start = torch.arange(-(-seq_len // block_size), device=device) * block_size
    b_end = torch.clamp(b_start + block_size, max=seq_len)
    inter = torch.minimum(c_end[:, None], b_end[None, :]) - torch.maximum(c_start[:, None], b_start[None, :])
    return inter.clamp(min=0).float() / (c_end - c_start)[:, None].float()


@register_attention("nsa")
class NativeSparseAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.causal = config.causal
        self.block_size = config.attn_block
        self.stride = config.attn_stride or config.attn_block // 2
        if not 1 <= self.stride <= self.block_size:
            raise ValueError(f"attn_stride={self.stride} must be in [1, attn_block={self.block_size}]")
        self.topk = max(config.attn_topk, 3 if config.causal else 1)  # at least the forced blocks
        self.window = config.attn_window
        self.n_head = config.n_head
        self.gate = nn.Linear(config.d_model, 3 * config.n_head)
        nn.init.zeros_(self.gate.bias)

    @staticmethod
    def param_count(config: ModelConfig) -> int:
        return 3 * config.n_head * (config.d_model + 1)  # the gate, with bias

    def compressed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compressed branch: output (B, Hq, T, D) and probabilities (B, Hkv, G, T, Nc) in fp32."""
        B, Hq, T, D = q.shape
        Hkv = k.shape[1]
        ck = compress_blocks(k, self.block_size, self.stride, self.causal)  # (B, Hkv, Nc, D)
        cv = compress_blocks(v, self.block_size, self.stride, self.causal)
        n_cmp = ck.shape[2]
        if n_cmp == 0:  # causal and T < attn_block: no complete block yet
            return torch.zeros_like(q), q.new_zeros(B, Hkv, Hq // Hkv, T, 0, dtype=torch.float32)
        qg = q.view(B, Hkv, Hq // Hkv, T, D)
        scores = (qg @ ck.unsqueeze(2).transpose(-1, -2)).float() * D**-0.5  # (B, Hkv, G, T, Nc)
        visible = torch.ones(T, n_cmp, dtype=torch.bool, device=q.device)  # (T, Nc)
        if self.causal:
            last = torch.arange(n_cmp, device=q.device) * self.stride + self.block_size - 1
            visible = last[None, :] <= torch.arange(T, device=q.device)[:, None]
        p = masked_softmax(scores, visible)
        out = (p.to(cv.dtype) @ cv.unsqueeze(2)).view(B, Hq, T, D)
        return out, p

    @torch.no_grad()
    def block_lists(self, p_cmp: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Selection lists (B, Hkv, N, min(topk, N)) and counts (B, Hkv, N), int32, from p_cmp (B, Hkv, G, T, Nc)."""
        mass = query_block_sums(p_cmp.sum(2), self.block_size, self.causal)  # (B, Hkv, N, Nc)
        overlap = block_overlap(p_cmp.shape[-1], self.block_size, self.stride, self.block_size, seq_len,
                                p_cmp.device)  # (Nc, N)
        scores = mass @ overlap  # (B, Hkv, N, N)
        blocks = torch.arange(scores.shape[-1], device=p_cmp.device)
        qb, kb = blocks[:, None], blocks[None, :]
        if self.causal:
            allowed, forced = kb <= qb, (kb == 0) | (kb == qb) | (kb == qb - 1)
        else:
            allowed, forced = None, kb == qb
        return topk_block_lists(scores, self.topk, allowed=allowed, forced=forced)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, Hkv, T, _ = k.shape
        o_cmp, p_cmp = self.compressed(q, k, v)
        indices, counts = self.block_lists(p_cmp, T)
        o_slc = block_sparse_attention(q, k, v, indices, counts, block_size=self.block_size, causal=self.causal)
        w_indices, w_counts = window_block_lists(T, self.block_size, self.window, self.causal, q.device)
        n = w_indices.shape[2]
        o_swa = block_sparse_attention(
            q, k, v, w_indices.expand(B, Hkv, n, -1), w_counts.expand(B, Hkv, n),
            block_size=self.block_size, causal=self.causal, window=self.window,
        )
        g = torch.sigmoid(self.gate(x)).view(B, T, 3, self.n_head).permute(2, 0, 3, 1).unsqueeze(-1)  # (3, B, Hq, T, 1)
        return g[0] * o_cmp + g[1] * o_slc + g[2] * o_swa  # (B, Hq, T, D)
