"""Triton kernels for block-sparse attention: kernels, launchers, autograd.Function, functional entry.

Forward (grid: query block x (batch, kv head, head pack)): a program holds the queries of ``HP``
heads of one GQA group for one query block, stacked as ``HP * BLOCK`` rows, and walks that block's
key-block list with an fp32 online softmax in base 2; it stores O and the log2-sum-exp (LSE, +inf
for rows with no allowed key, so the backward sees p = 0 there and O is 0).

Backward: ``delta = rowsum(O * dO)`` in PyTorch, then two kernels without atomics (deterministic):
``dq`` on the forward grid and lists; ``dk/dv`` with one program per key block and kv head, walking
the *transposed* lists (the query blocks that list this key block, from a CSR-style inversion
done in PyTorch) and summing the group's query heads in-kernel.

All accumulation is fp32; inputs fp32 (dots in IEEE fp32), fp16 or bf16. Block size and head dim
are padded to powers of two >= 16 and masked. List loops use a runtime bound (the list width) with
``if slot < count`` inside, which also runs in the CPU interpreter (``TRITON_INTERPRET=1``, set
before this module is imported; the interpreter has no bf16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _token_mask(q_pos, row_ok, k_pos, col_ok, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(ROWS, BLOCK) bool: real query row, real key column, causal and window conditions."""
    allowed = row_ok[:, None] & col_ok[None, :]
    if CAUSAL:
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])
    if HAS_WINDOW:
        dist = q_pos[:, None] - k_pos[None, :]
        if CAUSAL:
            allowed = allowed & (dist < window)
        else:
            allowed = allowed & (tl.abs(dist) < window)
    return allowed


@triton.jit
def _fwd_kernel(
    Q, K, V, OUT, LSE, IDX, CNT,
    T, N, n_slots, block_size, window, scale_log2,
    HQ, HKV,
    G: tl.constexpr, HP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
):
    i_q = tl.program_id(0)
    i_bp = tl.program_id(1)
    n_packs = G // HP
    i_b = i_bp // (HKV * n_packs)
    i_hkv = (i_bp // n_packs) % HKV
    i_h0 = i_hkv * G + (i_bp % n_packs) * HP  # first query head of this pack

    r = tl.arange(0, ROWS)
    head, rr = r // BLOCK, r % BLOCK  # row -> (head within the pack, token within the block)
    q_pos = i_q * block_size + rr
    row_ok = (rr < block_size) & (q_pos < T)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    c = tl.arange(0, BLOCK)

    q_base = (i_b * HQ + i_h0).to(tl.int64) * T  # row offset of (batch, first head, token 0)
    row = head * T + q_pos
    q = tl.load(Q + (q_base + row)[:, None] * D + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    kv_base = (i_b * HKV + i_hkv).to(tl.int64) * T * D
    list_row = (i_b * HKV + i_hkv).to(tl.int64) * N + i_q
    count = tl.load(CNT + list_row)

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    for slot in range(0, n_slots):
        if slot < count:
            kb = tl.load(IDX + list_row * n_slots + slot)
            k_pos = kb * block_size + c
            col_ok = (c < block_size) & (k_pos < T)
            kv_ptr = kv_base + k_pos[:, None] * D + d[None, :]
            kv_mask = col_ok[:, None] & d_ok[None, :]
            k = tl.load(K + kv_ptr, mask=kv_mask, other=0.0)
            v = tl.load(V + kv_ptr, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (ROWS, BLOCK), base 2
            s = tl.where(_token_mask(q_pos, row_ok, k_pos, col_ok, window, CAUSAL, HAS_WINDOW), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
            alpha = tl.exp2(m_i - m_ref)
            p = tl.exp2(s - m_ref[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new

    has_key = l_i > 0
    o = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
    tl.store(OUT + (q_base + row)[:, None] * D + d[None, :], o.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + q_base + row, lse, mask=row_ok)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, IDX, CNT,
    T, N, n_slots, block_size, window, scale_log2, scale,
    HQ, HKV,
    G: tl.constexpr, HP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
):
    i_q = tl.program_id(0)
    i_bp = tl.program_id(1)
    n_packs = G // HP
    i_b = i_bp // (HKV * n_packs)
    i_hkv = (i_bp // n_packs) % HKV
    i_h0 = i_hkv * G + (i_bp % n_packs) * HP

    r = tl.arange(0, ROWS)
    head, rr = r // BLOCK, r % BLOCK
    q_pos = i_q * block_size + rr
    row_ok = (rr < block_size) & (q_pos < T)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    c = tl.arange(0, BLOCK)

    q_base = (i_b * HQ + i_h0).to(tl.int64) * T
    row = head * T + q_pos
    q_ptr = (q_base + row)[:, None] * D + d[None, :]
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + q_ptr, mask=q_mask, other=0.0)
    do = tl.load(DO + q_ptr, mask=q_mask, other=0.0)
    lse = tl.load(LSE + q_base + row, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + q_base + row, mask=row_ok, other=0.0)
    kv_base = (i_b * HKV + i_hkv).to(tl.int64) * T * D
    list_row = (i_b * HKV + i_hkv).to(tl.int64) * N + i_q
    count = tl.load(CNT + list_row)

    dq = tl.zeros([ROWS, BLOCK_D], tl.float32)
    for slot in range(0, n_slots):
        if slot < count:
            kb = tl.load(IDX + list_row * n_slots + slot)
            k_pos = kb * block_size + c
            col_ok = (c < block_size) & (k_pos < T)
            kv_ptr = kv_base + k_pos[:, None] * D + d[None, :]
            kv_mask = col_ok[:, None] & d_ok[None, :]
            k = tl.load(K + kv_ptr, mask=kv_mask, other=0.0)
            v = tl.load(V + kv_ptr, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            s = tl.where(_token_mask(q_pos, row_ok, k_pos, col_ok, window, CAUSAL, HAS_WINDOW), s, float("-inf"))
            p = tl.exp2(s - lse[:, None])  # (ROWS, BLOCK); 0 where masked or the row is empty
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    tl.store(DQ + q_ptr, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, QIDX, QCNT,
    T, N, n_slots, block_size, window, scale_log2, scale,
    HQ, HKV,
    G: tl.constexpr, HP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
):
    i_k = tl.program_id(0)  # key block
    i_bh = tl.program_id(1)
    i_b, i_hkv = i_bh // HKV, i_bh % HKV

    c = tl.arange(0, BLOCK)
    k_pos = i_k * block_size + c
    col_ok = (c < block_size) & (k_pos < T)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    kv_ptr = (i_b * HKV + i_hkv).to(tl.int64) * T * D + k_pos[:, None] * D + d[None, :]
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = tl.load(K + kv_ptr, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_ptr, mask=kv_mask, other=0.0)

    r = tl.arange(0, ROWS)
    head, rr = r // BLOCK, r % BLOCK
    list_row = (i_b * HKV + i_hkv).to(tl.int64) * N + i_k
    count = tl.load(QCNT + list_row)

    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for slot in range(0, n_slots):
        if slot < count:
            qb = tl.load(QIDX + list_row * n_slots + slot)  # a query block that lists this key block
            q_pos = qb * block_size + rr
            row_ok = (rr < block_size) & (q_pos < T)
            allowed = _token_mask(q_pos, row_ok, k_pos, col_ok, window, CAUSAL, HAS_WINDOW)
            q_mask = row_ok[:, None] & d_ok[None, :]
            for i_p in range(0, G // HP):  # the group's query heads, HP at a time
                q_base = (i_b * HQ + i_hkv * G + i_p * HP).to(tl.int64) * T
                row = head * T + q_pos
                q_ptr = (q_base + row)[:, None] * D + d[None, :]
                q = tl.load(Q + q_ptr, mask=q_mask, other=0.0)
                do = tl.load(DO + q_ptr, mask=q_mask, other=0.0)
                lse = tl.load(LSE + q_base + row, mask=row_ok, other=0.0)
                delta = tl.load(DELTA + q_base + row, mask=row_ok, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (ROWS, BLOCK)
                p = tl.exp2(tl.where(allowed, s, float("-inf")) - lse[:, None])
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    tl.store(DK + kv_ptr, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_ptr, dv.to(DV.dtype.element_ty), mask=kv_mask)


def transpose_block_lists(
    kv_indices: torch.Tensor, kv_counts: torch.Tensor, n_key_blocks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert per-query-block key lists into per-key-block query lists (CSR transpose, no host sync).

    (B, H, Nq, S) / (B, H, Nq) -> ``q_indices`` (B, H, Nk, Nq) int32, sorted query-block ids in the
    first ``q_counts`` (B, H, Nk) int32 slots.
    """
    B, H, Nq, S = kv_indices.shape
    valid = torch.arange(S, device=kv_indices.device) < kv_counts[..., None]
    cols = torch.where(valid, kv_indices, n_key_blocks).long()  # unused slots go to a spare column
    hit = torch.zeros(B, H, Nq, n_key_blocks + 1, dtype=torch.bool, device=kv_indices.device)
    hit = hit.scatter_(3, cols, True)[..., :n_key_blocks].transpose(2, 3)  # (B, H, Nk, Nq)
    q_counts = hit.sum(-1, dtype=torch.int32)
    slot = torch.where(hit, hit.cumsum(-1) - 1, Nq)  # rank among the row's hits; misses to a spare slot
    q_ids = torch.arange(Nq, dtype=torch.int32, device=kv_indices.device).expand(B, H, n_key_blocks, Nq)
    q_indices = torch.zeros(B, H, n_key_blocks, Nq + 1, dtype=torch.int32, device=kv_indices.device)
    q_indices = q_indices.scatter_(3, slot, q_ids)[..., :Nq]
    return q_indices.contiguous(), q_counts


def _tiles(meta: dict, max_rows: int) -> dict:
    """Head pack HP (query heads per program: the largest power of two dividing G with HP * BLOCK <=
    max_rows, at least 1), the row count and the warps for a launch."""
    hp = 1
    while meta["G"] % (2 * hp) == 0 and 2 * hp * meta["BLOCK"] <= max_rows:
        hp *= 2
    rows = hp * meta["BLOCK"]
    return dict(HP=hp, ROWS=rows, num_warps=4 if max(rows, meta["BLOCK"]) * meta["BLOCK_D"] <= 64 * 64 else 8)


def _meta(q: torch.Tensor, k: torch.Tensor, block_size: int, causal: bool, window: int | None) -> dict:
    D = q.shape[-1]
    return dict(
        G=q.shape[1] // k.shape[1],
        D=D,
        BLOCK=max(16, triton.next_power_of_2(block_size)),
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        CAUSAL=causal,
        HAS_WINDOW=window is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def block_sparse_fwd(q, k, v, kv_indices, kv_counts, block_size, causal, window, scale):
    """Launch the forward kernel: returns O (B, Hq, T, D) and the base-2 LSE (B, Hq, T) fp32."""
    B, Hq, T, D = q.shape
    Hkv, N, S = k.shape[1], kv_indices.shape[2], kv_indices.shape[3]
    meta = _meta(q, k, block_size, causal, window)
    tiles = _tiles(meta, max_rows=128 if meta["BLOCK_D"] <= 128 else 64)
    o = torch.empty_like(q)
    lse = torch.empty(B, Hq, T, dtype=torch.float32, device=q.device)
    _fwd_kernel[(N, B * Hkv * (meta["G"] // tiles["HP"]))](
        q, k, v, o, lse, kv_indices, kv_counts,
        T, N, S, block_size, window or 0, scale * LOG2E, Hq, Hkv, **tiles, **meta,
    )
    return o, lse


def block_sparse_bwd(q, k, v, o, lse, do, kv_indices, kv_counts, block_size, causal, window, scale):
    """Launch the backward kernels: returns dq, dk, dv."""
    B, Hq, T, D = q.shape
    Hkv, N, S = k.shape[1], kv_indices.shape[2], kv_indices.shape[3]
    meta = _meta(q, k, block_size, causal, window)
    delta = (o.float() * do.float()).sum(-1)  # (B, Hq, T)
    common = (T, N)
    scalars = (block_size, window or 0, scale * LOG2E, scale, Hq, Hkv)

    dq = torch.empty_like(q)
    tiles = _tiles(meta, max_rows=64)  # q, dO and the dq accumulator stay resident
    _bwd_dq_kernel[(N, B * Hkv * (meta["G"] // tiles["HP"]))](
        q, k, v, do, lse, delta, dq, kv_indices, kv_counts, *common, S, *scalars, **tiles, **meta,
    )

    q_indices, q_counts = transpose_block_lists(kv_indices, kv_counts, N)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _bwd_dkdv_kernel[(N, B * Hkv)](
        q, k, v, do, lse, delta, dk, dv, q_indices, q_counts, *common, N, *scalars,
        **_tiles(meta, max_rows=64), **meta,
    )
    return dq, dk, dv


class BlockSparseAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, O, LSE and the lists; the lists get no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, kv_indices, kv_counts, block_size, causal, window, scale):
        o, lse = block_sparse_fwd(q, k, v, kv_indices, kv_counts, block_size, causal, window, scale)
        ctx.save_for_backward(q, k, v, o, lse, kv_indices, kv_counts)
        ctx.config = (block_size, causal, window, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kv_indices, kv_counts = ctx.saved_tensors
        dq, dk, dv = block_sparse_bwd(q, k, v, o, lse, do.contiguous(), kv_indices, kv_counts, *ctx.config)
        return dq, dk, dv, None, None, None, None, None, None


def block_sparse_attention_triton(
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
    """Triton block-sparse attention; arguments as ``models.attention.block_sparse_attention``."""
    if q.device.type != "cuda" and isinstance(_fwd_kernel, triton.runtime.JITFunction):
        raise RuntimeError(
            "the Triton attention backend needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
            "before triton kernels are imported, or use backend='torch'"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k, v must share one of float16/bfloat16/float32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] > 256:
        raise ValueError(f"head dim {q.shape[-1]} > 256 is not supported by the Triton kernels")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return BlockSparseAttentionFunction.apply(
        q, k, v, kv_indices.contiguous(), kv_counts.contiguous(), block_size, causal, window, scale
    )
