"""Block diffusion (BD3-LM, Arriola et al., ICLR 2025): autoregressive over blocks, masked diffusion inside.

The sequence x (T tokens) is cut into N = ceil(T / b) blocks x^1 .. x^N of b tokens (the last may be
partial). The likelihood factorises over blocks and each factor is bounded by the masked-diffusion
ELBO of its block, conditioned on the clean blocks before it (linear schedule, alpha_t = 1 - t):

    -log p(x) = sum_k -log p(x^k | x^<k)  <=  sum_k L_k,
    L_k = E_{t ~ U(0,1)} E_{x_t^k} [ (1/t) sum_{i in block k, x_t,i = [MASK]} -log p(x_i | x_t^k, x^<k) ],

each token of x_t^k being [MASK] independently with probability t. b = 1 is autoregression, b >= T
(one block) is masked diffusion.

Vectorised training (BD3-LM): one forward pass over the clean and the noised sequence side by side,

    ids       = [x^1 .. x^{N-1} | x_t^1 .. x_t^N]       (Tc + T tokens, Tc = (N - 1) b)
    positions = [0 .. Tc - 1    | 0 .. T - 1    ]       (a clean token and its noised copy share RoPE position i)

where a noised block k attends bidirectionally to itself and to the clean blocks < k, and a clean
block k attends to the clean blocks <= k (block-causal). The clean copy of the last block is left
out: no loss term reads it (noised blocks see only *earlier* clean blocks), so b >= T costs exactly
one diffusion pass. The mask is a ``BlockMask`` (block lists of ``block_sparse_attention``, or the
same mask token by token for SDPA: ``training_mask``); ``dense_reference_mask`` rebuilds it from
these rules alone. The logits of the noised stream at position i predict x_i.

Noise: one t per (sequence, block), stratified ("antithetic") over the global batch and the blocks:
row r of a global batch of G rows, block k, gets t = eps + (1 - eps) s with
s = (u + (k G + r) / (G N)) mod 1, u one uniform per optimiser step; validation takes K draws per
sequence, s_j = (u_k + j) / K per block k (u_k one uniform per sequence and block), masks seeded, so it
is deterministic; its Monte Carlo variance is returned as for ``diffusion``. The estimators are the
diffusion objective's, per block: ``time`` (i.i.d. masks with probability t, weight 1/t) or ``count``
(exactly l = ceil(s L) of the block's L valid tokens masked, weight L / l).

Special cases, tested (tests/test_block_diffusion.py):

* b >= T: one block and no clean stream; the draws are exactly those of ``MaskedDiffusionObjective``
  (same generator calls), so the ELBO equals the masked-diffusion ELBO with the same draws.
* b = 1, exact correspondence with autoregression. Every block is one token, so the ``count``
  estimator masks it always (l = L = 1, weight 1) and L_k = -log p(x_k | [MASK] at k, x_<k), exactly,
  for every draw (variance 0). The clean stream is then token-causal: the same computation as a
  causal transformer on the prefix. Weight mapping: the identity -- load the same state dict into a
  ``Transformer`` with ``causal=True``; then the noised-stream logits at position k equal
  ``causal_model(cat(x[:, :k], [MASK]))[:, k]`` (the prefix x_<k at positions 0 .. k-1 and a [MASK]
  query slot at position k), so the validation ELBO is the exact AR NLL sum_k -log p(x_k | x_<k) of
  that causal model under this "mask-query" input convention. It is not the ``ar`` objective's
  convention (input [EOD] + x_<k, token x_{k-1} in the query slot, positions shifted by one): the
  same weights give a different number there. With the ``time`` estimator b = 1 is the same NLL in
  expectation only.

Shapes: B batch, T sequence, N blocks, b block size, K Monte Carlo draws, V vocabulary.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.attention.block_sparse import BlockMask
from models.objectives.base import EvalSums
from models.objectives.diffusion import DiffusionConfig, MaskedDiffusionObjective


@dataclass(frozen=True)
class BlockDiffusionConfig(DiffusionConfig):
    """Settings of block diffusion: the diffusion objective's (applied per block) plus the block size."""

    block_size: int = field(default=16, metadata={
        "help": "block diffusion: tokens per block b (1: autoregression, >= seq_len: masked diffusion)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")


# --------------------------------------------------------------------------- masks
def num_blocks(seq_len: int, block_size: int) -> int:
    return -(-seq_len // block_size)


def visible_blocks(q_noised: torch.Tensor, q_block: torch.Tensor, k_noised: torch.Tensor,
                   k_block: torch.Tensor) -> torch.Tensor:
    """The attention rule, for queries (Q, 1) and keys (1, K) given by stream (noised?) and block index:
    a clean key of block j is seen by the queries of blocks > j, and by the clean block j itself; a
    noised key only by its own noised block. Returns (Q, K) bool."""
    clean_key = ~k_noised & ((k_block < q_block) | (~q_noised & (k_block == q_block)))
    noised_key = k_noised & q_noised & (k_block == q_block)
    return clean_key | noised_key


@functools.lru_cache(maxsize=256)
def block_diffusion_mask(n_clean: int, noised: tuple[int, ...], block_size: int, k_len: int, q_len: int,
                         device: torch.device) -> BlockMask:
    """The mask of a layout of ``n_clean`` clean blocks (0 .. n_clean - 1) followed by the noised blocks
    ``noised`` (block indices), ``k_len`` tokens in all; the queries are its last ``q_len`` tokens
    (a KV cache holds the others). Cached: do not modify the result."""
    k_noised = torch.tensor([False] * n_clean + [True] * len(noised))
    k_block = torch.tensor(list(range(n_clean)) + list(noised))
    n_q = num_blocks(q_len, block_size)
    vis = visible_blocks(k_noised[-n_q:, None], k_block[-n_q:, None], k_noised[None], k_block[None])
    return BlockMask.from_visible(vis.to(device), block_size, q_len, k_len)


def training_layout(seq_len: int, block_size: int) -> tuple[int, torch.Tensor]:
    """Tc, the clean-stream length (N - 1) b, and the positions (Tc + T,) of ``[clean | noised]``."""
    n_clean = num_blocks(seq_len, block_size) - 1
    tc = n_clean * block_size
    return tc, torch.cat([torch.arange(tc), torch.arange(seq_len)])


def training_mask(seq_len: int, block_size: int, device: torch.device) -> BlockMask:
    """The mask of the training layout ``[x^1 .. x^{N-1} | x_t^1 .. x_t^N]`` (module docstring)."""
    n = num_blocks(seq_len, block_size)
    k_len = (n - 1) * block_size + seq_len
    return block_diffusion_mask(n - 1, tuple(range(n)), block_size, k_len, k_len, torch.device(device))


def dense_reference_mask(seq_len: int, block_size: int) -> torch.Tensor:
    """The training mask (Tc + T, Tc + T) bool written token by token from the rules alone (the reference):
    token a of the layout is (stream, position p_a) with block p_a // b; a noised query sees the noised
    tokens of its own block and the clean tokens of earlier blocks; a clean query sees the clean
    tokens of its own and earlier blocks."""
    tc = (-(-seq_len // block_size) - 1) * block_size  # clean tokens: all blocks but the last
    a = torch.arange(tc + seq_len)
    noised = a >= tc
    blk = torch.where(noised, a - tc, a) // block_size  # block of the token's position
    q_n, q_b, k_n, k_b = noised[:, None], blk[:, None], noised[None, :], blk[None, :]
    return torch.where(q_n, (k_n & (k_b == q_b)) | (~k_n & (k_b < q_b)), ~k_n & (k_b <= q_b))


def two_stream_logits(model: nn.Module, x: torch.Tensor, xt: torch.Tensor, block_size: int,
                      noised_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass over ``[clean x | noised xt]`` (both (B, T)): logits of the noised stream (B, T, V), whose
    position i predicts x_i, and of the clean stream (B, Tc, V) (None with ``noised_only``, which
    computes the output head on the noised stream only)."""
    T = x.shape[1]
    tc, positions = training_layout(T, block_size)
    ids = torch.cat([x[:, :tc], xt], dim=1)  # (B, Tc + T)
    mask = training_mask(T, block_size, x.device)
    logits = model(ids, positions=positions.to(x.device), mask=mask, logits_to_keep=T if noised_only else None)
    return (logits, None) if noised_only else (logits[:, tc:], logits[:, :tc])


# --------------------------------------------------------------------------- the objective
class BlockDiffusionObjective(MaskedDiffusionObjective):
    name = "block_diffusion"
    # Neither causal nor bidirectional: every pass brings its own mask (``BlockMask``), which replaces
    # the config's flag. Declared bidirectional so that a plain ``model(ids)`` is one block (b >= T).
    causal = False
    decoding = "blockwise"
    needs_attention_mask = True
    Config = BlockDiffusionConfig

    # eval_passes: mc_samples, each over Tc + T = 2T - b tokens (at most)

    def describe(self):
        return {**super().describe(), "block_size": self.config.block_size}

    def block_noise(self, strata: torch.Tensor, u: torch.Tensor, valid: torch.Tensor,
                    estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (R, T) bool and per-token noise levels t (R, T) (weight 1/t) from block strata (R, N) in
        [0, 1) and uniforms u (R, T): ``time``: t = eps + (1 - eps) s, mask where u < t; ``count``: mask the
        l = ceil(s L) valid tokens of lowest u among a block's L, t = l / L. Padding is never masked."""
        R, T = u.shape
        b, n = self.config.block_size, strata.shape[1]
        pad = n * b - T
        vb = F.pad(valid, (0, pad)).view(R, n, b)  # (R, N, b)
        ub = F.pad(u, (0, pad), value=2.0).view(R, n, b)
        if estimator == "count":
            n_valid = vb.sum(-1).float().clamp_min(1)  # (R, N)
            count = torch.ceil(strata * n_valid).clamp_min(1)
            rank = ub.masked_fill(~vb, 2.0).argsort(-1).argsort(-1)  # padding ranks last
            masked, t = (rank < count[..., None]) & vb, count / n_valid
        else:
            t = self.schedule.mask_probability(strata)  # (R, N)
            masked = (ub < t[..., None]) & vb
        t = t[..., None].expand(R, n, b).reshape(R, n * b)[:, :T]
        return masked.reshape(R, n * b)[:, :T], t

    def _weighted_ce(self, model: nn.Module, x, valid, strata, u, estimator: str) -> torch.Tensor:
        """Per-sequence sum (R,) of CE / t over the masked tokens of every block."""
        masked, t = self.block_noise(strata.to(x.device), u.to(x.device), valid, estimator)  # (R, T) each
        xt = torch.where(masked, torch.full_like(x, self.ids.mask), x)
        logits, _ = two_stream_logits(model, x, xt, self.config.block_size, noised_only=True)  # (R, T, V)
        ce = F.cross_entropy(logits[masked].float(), x[masked], reduction="none")  # (M,)
        per_token = torch.zeros(x.shape, dtype=ce.dtype, device=x.device)
        per_token[masked] = ce / t[masked]
        return per_token.sum(dim=1)  # (R,)

    def block_strata(self, positions: torch.Tensor, group: int, offset: torch.Tensor, seq_len: int) -> torch.Tensor:
        """(B, N) levels in [0, 1): row r of a group of G rows, block k: (offset + (k G + r) / (G N)) mod 1,
        evenly spread over the group's G N (row, block) pairs and over each row's blocks. N = 1 gives
        ``MaskedDiffusionObjective.strata``."""
        n = num_blocks(seq_len, self.config.block_size)
        level = torch.arange(n) * group + positions[:, None]  # (B, N)
        return (offset + level / (group * n)) % 1.0

    def training_noise(self, row_generators, positions, group, offset_generator, seq_len, progress=1.0):
        strata = self.block_strata(positions, group, torch.rand(1, generator=offset_generator), seq_len)
        u = torch.stack([torch.rand(seq_len, generator=g) for g in row_generators])
        return {"strata": self.curriculum(strata, progress), "u": u}

    def loss_sum(self, model, x, valid, generator=None, noise=None):
        """``noise`` ({"strata": (B, N), "u": (B, T)}) fixes the draws; otherwise they come from
        ``generator`` (on the CPU), in the order ``MaskedDiffusionObjective`` draws them."""
        if noise is None:
            B, T = x.shape
            noise = {"strata": self.block_strata(torch.arange(B), B, torch.rand(1, generator=generator), T),
                     "u": torch.rand(x.shape, generator=generator)}
        return self._weighted_ce(model, x, valid, noise["strata"], noise["u"], self.config.train_estimator).sum()

    def evaluate(self, model, x, valid, generator=None):
        """K draws per sequence, stratified per block: s_jk = (u_k + j) / K; the estimator is
        ``config.eval_estimator``. Returns the mean over draws and its variance (between-draw variance / K)."""
        B, T = x.shape
        K, n = self.config.mc_samples, num_blocks(T, self.config.block_size)
        u = torch.rand(B, n, generator=generator)  # one offset per sequence and block
        strata = (u[:, None, :] + torch.arange(K)[None, :, None]) / K  # (B, K, N)
        xs = x.repeat_interleave(K, dim=0)  # (B*K, T): the K draws of a sequence are adjacent
        vs = valid.repeat_interleave(K, dim=0)
        scores = torch.rand(xs.shape, generator=generator)
        est = self._weighted_ce(model, xs, vs, strata.reshape(B * K, n), scores, self.config.eval_estimator)
        est = est.view(B, K).double()
        var = est.var(dim=1) / K if K > 1 else torch.zeros_like(est[:, 0])  # MC variance of the mean
        return EvalSums(est.mean(dim=1).sum(), var.sum(), valid.sum().double())
