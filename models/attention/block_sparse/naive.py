"""Plain-PyTorch block-sparse attention: the CPU training path and the oracle of the Triton kernels.

Instead of a dense T x T mask, every query block gathers the key/value blocks of its list, and one
batched ``F.scaled_dot_product_attention`` call with a token-wise bool mask attends each query
block to them (the fused CPU kernel, or SDPA's other backends), so time and memory grow with
``T * S * block_size`` (S the list width) rather than ``T**2``. Autograd differentiates it in q, k
and v; it runs in the input dtype (SDPA accumulates in fp32), float64 included.

Shapes: B batch, Hq query heads, Hkv key/value heads, G = Hq // Hkv, T tokens, D head dim,
N = ceil(T / block_size) blocks, S list width, L = block_size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of ``scores`` restricted to ``mask`` (broadcastable bool).

    Masked entries get probability 0; a row with no allowed entry is all zeros (not NaN), in the
    forward and the backward pass.
    """
    scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).detach()  # a shift only: no gradient needed
    row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    p = torch.exp(scores - row_max)  # exp(-inf) = 0 with a zero gradient
    denom = p.sum(dim=-1, keepdim=True)
    return p / denom.masked_fill(denom == 0, 1.0)


def token_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, *, causal: bool, window: int | None
) -> torch.Tensor:
    """Token-wise mask between query positions ``q_pos`` (..., Q, 1) and key positions ``k_pos`` (..., 1, K).

    Causal: ``k <= q`` (and ``q - k < window``); bidirectional: ``|q - k| < window`` when a window is
    set. Written as comparisons against shifted query positions, so no (Q, K) integer tensor is built.
    """
    allowed = torch.ones(torch.broadcast_shapes(q_pos.shape, k_pos.shape), dtype=torch.bool, device=q_pos.device)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
        if not causal:
            allowed &= k_pos < q_pos + window
    return allowed


def block_sparse_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_counts: torch.Tensor,
    *,
    block_size: int,
    causal: bool,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Reference block-sparse attention; arguments as ``models.attention.block_sparse_attention``."""
    B, Hq, T, D = q.shape
    Hkv, G, L = k.shape[1], Hq // k.shape[1], block_size
    N, S = kv_indices.shape[2], kv_indices.shape[3]
    pad = N * L - T

    def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B, H, N, L, D), zero-padded tail
        return (F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(x.shape[0], x.shape[1], N, L, D)

    slot_ok = torch.arange(S, device=q.device) < kv_counts[..., None]  # (B, Hkv, N, S)
    ids = torch.where(slot_ok, kv_indices, 0).long()  # unused slots point at block 0, masked below
    gather = ids.view(B, Hkv, N * S, 1, 1).expand(B, Hkv, N * S, L, D)
    # One attention problem per (batch, kv head, query block): its G query heads over its S listed blocks.
    kg = blocks(k).gather(2, gather).view(B * Hkv * N, 1, S * L, D)
    vg = blocks(v).gather(2, gather).view(B * Hkv * N, 1, S * L, D)
    qb = blocks(q).view(B, Hkv, G, N, L, D).transpose(2, 3).reshape(B * Hkv * N, G, L, D)

    arange_l = torch.arange(L, dtype=torch.int32, device=q.device)
    q_pos = (torch.arange(N, dtype=torch.int32, device=q.device)[:, None] * L + arange_l).view(1, 1, N, L, 1)
    k_pos = (ids.int()[..., None] * L + arange_l).view(B, Hkv, N, 1, S * L)
    k_ok = (slot_ok[..., None] & (k_pos.view(B, Hkv, N, S, L) < T)).view(B, Hkv, N, 1, S * L)
    mask = (k_ok & token_mask(q_pos, k_pos, causal=causal, window=window)).view(B * Hkv * N, 1, L, S * L)
    # Rows without any allowed key: let SDPA see one (finite, no NaN in any backend), then zero them.
    has_key = mask.any(-1, keepdim=True)  # (B * Hkv * N, 1, L, 1)
    first = torch.arange(S * L, device=q.device) == 0
    out = F.scaled_dot_product_attention(qb, kg, vg, attn_mask=mask | (~has_key & first), scale=scale,
                                         enable_gqa=G > 1).masked_fill(~has_key, 0.0)  # (B * Hkv * N, G, L, D)
    return out.view(B, Hkv, N, G, L, D).transpose(2, 3).reshape(B, Hq, N * L, D)[:, :, :T]
