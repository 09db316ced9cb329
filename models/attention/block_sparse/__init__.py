"""Block-sparse attention (design contract 6): the functional API, its backend choice and block-list builders.

``block_sparse_attention`` lets query block ``i`` (tokens ``i*L .. i*L+L-1``, ``L = block_size``)
attend to the tokens of the key blocks listed in ``kv_indices[b, h, i, :kv_counts[b, h, i]]``, with
the causal and sliding-window masks applied token-wise on top. Two backends compute it:

* ``"torch"``  -- ``naive.block_sparse_attention_torch``: gathers the listed blocks and runs one
  batched, token-masked SDPA call over them; runs anywhere, the CPU training path and the oracle.
* ``"triton"`` -- ``triton_kernels.block_sparse_attention_triton``: flash-style fused kernels with a
  deterministic backward; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``. Triton is
  imported only when this backend runs.

The backend is the ``backend`` argument if given, else the ``CROSSOVER_ATTENTION_BACKEND``
environment variable (``torch``, ``triton`` or ``auto``), else ``auto``: Triton for CUDA tensors,
PyTorch otherwise.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from models.attention.block_sparse.naive import block_sparse_attention_torch

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "CROSSOVER_ATTENTION_BACKEND"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """``"torch"`` or ``"triton"``: ``backend``, else ``$CROSSOVER_ATTENTION_BACKEND``, else by device."""
    choice = backend or os.environ.get(BACKEND_ENV) or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"unknown attention backend {choice!r}; choose from {', '.join(BACKENDS)}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return choice


def block_sparse_attention(
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
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of each query block over the tokens of its listed key blocks.

    Args:
        q: (B, Hq, T, D) queries; k, v: (B, Hkv, T, D) with ``Hq % Hkv == 0`` (grouped-query attention:
            query head ``h`` reads key/value head ``h // (Hq // Hkv)`` and that head's lists).
        kv_indices: (B, Hkv, ceil(T / block_size), S) int32; the first ``kv_counts`` entries of a row
            are sorted, distinct key-block ids; the rest is ignored.
        kv_counts: (B, Hkv, ceil(T / block_size)) int32, valid entries per row (0 allowed).
        block_size: tokens per block (the last block may be partial).
        causal: also require key position <= query position.
        window: if set, also require ``query - key < window`` (causal) or ``|query - key| < window``.
        scale: softmax scale, default ``D ** -0.5``.
        backend: ``"torch"``, ``"triton"`` or ``"auto"``/None (see the module docstring).

    Returns:
        (B, Hq, T, D) in q's dtype. Rows with no allowed key (empty list, everything masked) are 0.
        Differentiable in q, k, v; the lists get no gradient.
    """
    B, Hq, T, D = q.shape
    n_blocks = -(-T // block_size)
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != (T, D) or Hq % k.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not fit k {tuple(k.shape)} / v {tuple(v.shape)}")
    if kv_indices.dim() != 4 or kv_indices.shape[:3] != (B, k.shape[1], n_blocks):
        raise ValueError(f"kv_indices {tuple(kv_indices.shape)} must be (B, Hkv, {n_blocks}, S)")
    if kv_counts.shape != kv_indices.shape[:3]:
        raise ValueError(f"kv_counts {tuple(kv_counts.shape)} must be {tuple(kv_indices.shape[:3])}")
    if kv_indices.dtype != torch.int32 or kv_counts.dtype != torch.int32:
        raise TypeError("kv_indices and kv_counts must be int32")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    args = (q, k, v, kv_indices, kv_counts)
    kwargs = dict(block_size=block_size, causal=causal, window=window, scale=scale)
    if resolve_backend(backend, q.device) == "torch":
        return block_sparse_attention_torch(*args, **kwargs)
    try:
        from models.attention.block_sparse.triton_kernels import block_sparse_attention_triton
    except ImportError as err:
        raise ImportError(
            f"the Triton attention backend needs a working `triton` install ({err}); "
            f"use backend='torch' or set {BACKEND_ENV}=torch"
        ) from err
    return block_sparse_attention_triton(*args, **kwargs)


@functools.lru_cache(maxsize=32)
def window_block_lists(
    seq_len: int, block_size: int, window: int, causal: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key blocks that a sliding window of ``window`` tokens can reach from each query block.

    Causal: keys ``q - window < k <= q``; bidirectional: ``|q - k| < window``. Returns
    ``kv_indices`` (1, 1, N, S) and ``kv_counts`` (1, 1, N), int32 on ``device`` (expand them to
    (B, Hkv, ...)); cached (shared tensors: do not modify them in place).
    """
    n = -(-seq_len // block_size)
    first_q = torch.arange(n) * block_size  # first and last token of each query block
    last_q = torch.clamp(first_q + block_size - 1, max=seq_len - 1)
    lo = torch.clamp(first_q - (window - 1), min=0) // block_size
    hi = (last_q if causal else torch.clamp(last_q + window - 1, max=seq_len - 1)) // block_size
    counts = hi - lo + 1  # (N,)
    slots = torch.arange(int(counts.max()))
    indices = torch.clamp(lo[:, None] + slots, max=n - 1)  # (N, S); slots past the count are ignored
    return indices.int().view(1, 1, n, -1).to(device), counts.int().view(1, 1, n).to(device)


@torch.no_grad()
def topk_block_lists(
    scores: torch.Tensor, k: int, allowed: torch.Tensor | None = None, forced: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``k`` highest-scoring allowed key blocks, forced blocks first, sorted by block id.

    Args:
        scores: (..., Nq, Nk) block scores (no gradient flows).
        k: blocks per row; forced blocks count towards ``k`` (at most ``k`` are taken, so pass
            ``k >= `` the number of forced blocks of a row to keep them all).
        allowed: bool, broadcastable to ``scores``; blocks that may be chosen (default: all).
        forced: bool, broadcastable to ``scores``; allowed blocks chosen whatever their score.

    Returns:
        ``kv_indices`` (..., Nq, min(k, Nk)) int32 and ``kv_counts`` (..., Nq) int32: a row with fewer
        than ``k`` allowed blocks takes them all; slots past its count hold 0.
    """
    n_keys = scores.shape[-1]
    s = scores.float()
    if forced is not None:
        s = s.masked_fill(forced, float("inf"))
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    values, ids = s.topk(min(k, n_keys), dim=-1)
    valid = values > float("-inf")
    ids = torch.where(valid, ids, n_keys).sort(dim=-1).values  # invalid slots sort to the end
    return torch.where(ids == n_keys, 0, ids).int(), valid.sum(-1).int()


def block_lists(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block lists of a block-level mask: ``visible`` (..., Nq, Nk) bool -> ``kv_indices`` (..., Nq, S) int32
    (the visible key blocks of each row in increasing order, 0 past the count; S = the largest count)
    and ``kv_counts`` (..., Nq) int32."""
    n_keys = visible.shape[-1]
    counts = visible.sum(-1)  # (..., Nq)
    ids = torch.where(visible, torch.arange(n_keys, device=visible.device), n_keys).sort(dim=-1).values
    ids = ids[..., : max(int(counts.max()), 1)]  # invisible blocks sorted to the end, cut off
    return torch.where(ids == n_keys, 0, ids).int(), counts.int()


class BlockMask:
    """A block-structured attention mask, the optional ``mask`` argument of an attention kind.

    The queries are the last ``q_len`` of ``k_len`` key positions (``q_len == k_len`` in training,
    fewer with a KV cache), and ``k_len - q_len`` is a multiple of ``block_size``. Query block ``i``
    (query tokens ``i*L .. i*L+L-1``, L = block_size) sees every token of the key blocks
    ``kv_indices[i, :kv_counts[i]]`` (key tokens ``j*L ..``), nothing else: the lists of
    ``block_sparse_attention`` (design contract 6), shared by the batch and the heads. The last
    query block and the last key block may be partial. ``dense()`` is the same mask token by token
    (Tq, Tk) bool, for SDPA.
    """

    def __init__(self, kv_indices: torch.Tensor, kv_counts: torch.Tensor, block_size: int, q_len: int, k_len: int):
        n_q = -(-q_len // block_size)
        if kv_indices.shape[0] != n_q or kv_counts.shape != (n_q,) or (k_len - q_len) % block_size or q_len > k_len:
            raise ValueError(f"block lists {tuple(kv_indices.shape)} do not fit {q_len} queries over {k_len} keys "
                             f"in blocks of {block_size}")
        self.kv_indices, self.kv_counts = kv_indices, kv_counts  # (Nq, S), (Nq,) int32
        self.block_size, self.q_len, self.k_len = block_size, q_len, k_len
        self._dense: torch.Tensor | None = None

    @classmethod
    def from_visible(cls, visible: torch.Tensor, block_size: int, q_len: int, k_len: int) -> BlockMask:
        """From a block-level mask ``visible`` (Nq, Nk) bool."""
        return cls(*block_lists(visible), block_size=block_size, q_len=q_len, k_len=k_len)

    def block_visible(self) -> torch.Tensor:
        """(Nq, Nk) bool: query block i sees key block j."""
        n_k = -(-self.k_len // self.block_size)
        slots = torch.arange(self.kv_indices.shape[1], device=self.kv_indices.device) < self.kv_counts[:, None]
        out = torch.zeros(self.kv_indices.shape[0], n_k, dtype=torch.int32, device=self.kv_indices.device)
        return out.scatter_add_(1, self.kv_indices.long(), slots.int()) > 0

    def dense(self) -> torch.Tensor:
        """(Tq, Tk) bool token mask (computed once)."""
        if self._dense is None:
            dev = self.kv_indices.device
            q_blk = torch.arange(self.q_len, device=dev) // self.block_size  # (Tq,)
            k_blk = torch.arange(self.k_len, device=dev) // self.block_size  # (Tk,)
            self._dense = self.block_visible()[q_blk][:, k_blk]
        return self._dense

    def lists(self, batch: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The lists expanded to the op's (B, Hkv, Nq, S) and (B, Hkv, Nq)."""
        n, s = self.kv_indices.shape
        return self.kv_indices.expand(batch, heads, n, s), self.kv_counts.expand(batch, heads, n)


def block_means(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """(..., T, D) -> (..., ceil(T / block_size), D): mean over the tokens of each block (a partial
    last block is averaged over its real tokens)."""
    T, D = x.shape[-2:]
    n = -(-T // block_size)
    sums = F.pad(x, (0, 0, 0, n * block_size - T)).unflatten(-2, (n, block_size)).sum(-2)
    counts = torch.clamp(T - torch.arange(n, device=x.device) * block_size, max=block_size)
    return sums / counts[:, None].to(x.dtype)


def query_block_sums(x: torch.Tensor, block_size: int, causal: bool) -> torch.Tensor:
    """(..., T, D) -> (..., ceil(T / block_size), D): per query block, a sum of token rows to score it by.

    Bidirectional: the tokens of the block. Causal: the ``block_size`` tokens ending at the block's
    *first* token (``i*L - L + 1 .. i*L``, clipped at 0), the only ones every token of block ``i`` may
    see, so that a block's selection never depends on its own later tokens.
    """
    T = x.shape[-2]
    n = -(-T // block_size)
    shift = block_size - 1 if causal else 0
    padded = F.pad(x, (0, 0, shift, n * block_size - T - shift))  # negative right pad crops unused tokens
    return padded.unflatten(-2, (n, block_size)).sum(-2)


__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "BlockMask",
    "block_lists",
    "block_means",
    "block_sparse_attention",
    "block_sparse_attention_torch",
    "query_block_sums",
    "resolve_backend",
    "topk_block_lists",
    "window_block_lists",
]
