"""Block-diffusion sampling (BD3-LM's semi-autoregressive sampler): blocks left to right, any diffusion
sampler inside a block, a KV cache of the clean blocks.

The template (B, T) is cut into the training blocks ``[k b, (k + 1) b)``. Block by block, a block
without [MASK] is clean context; a block with [MASK]s is denoised by one of the diffusion samplers
(``ancestral``, ``remask``, ``threshold``: the classes of ``models.sampling``, unchanged) run on that
block alone, through a model that sees the block (noised, bidirectional) and the clean blocks before
it -- the attention of training (``models.objectives.block_diffusion``). Each filled block then joins
the clean context.

KV cache: the clean blocks enter the backbone once, in the first pass of the next block that is
denoised (queries ``[pending clean blocks | noised block]``, the clean ones block-causal); their keys
and values stay in the cache and the noised block's are dropped after every pass
(``KVCache.truncate``), so every later pass runs on the b tokens of the block only. Without a cache
every pass recomputes ``[clean context | noised block]`` under the same mask; both give the same
logits, so greedy samples agree. Forward passes = denoising steps (no extra pass per block).

Prompt: the leading fixed tokens; a block that holds the end of the prompt is denoised with the
prompt's tokens fixed inside it. Infill: fixed tokens anywhere are kept; a fixed token conditions its
own block and the later ones, never an earlier block (the model cannot look ahead of the current
block). ``steps`` counts per block (default b: one token per step for ``remask``); ``remask`` takes
at most as many steps as the block has [MASK]s.

Shapes: B batch, T template, b block size, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from models.objectives.block_diffusion import block_diffusion_mask
from models.sampling.base import LogitsProcessor, SampleResult, SamplingError
from models.transformer import KVCache

#: the options of the inner sampler (per block); ``block_length`` is the block size here
BLOCK_SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {"ancestral": ("steps",), "remask": ("steps",),
                                                     "threshold": ("threshold",)}


class BlockDenoiser:
    """The model as the inner sampler sees it: noised block ids (B, n) -> logits (B, n, V), conditioned on
    the clean context (B, k b) before block k, through the KV cache when one is given."""

    def __init__(self, model: nn.Module, context: torch.Tensor, k: int, block_size: int, cache: KVCache | None):
        self.model, self.context, self.k, self.b, self.cache = model, context, k, block_size, cache

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        lo, n = self.context.shape[1], ids.shape[1]
        if self.cache is None:  # recompute the clean context every pass
            inputs = torch.cat([self.context, ids], dim=1)  # (B, kb + n)
        else:  # clean blocks not cached yet, then the noised block
            inputs = torch.cat([self.context[:, self.cache.length :], ids], dim=1)
        mask = block_diffusion_mask(self.k, (self.k,), self.b, lo + n, inputs.shape[1], ids.device)
        logits = self.model(inputs, cache=self.cache, mask=mask, logits_to_keep=n)  # (B, n, V)
        if self.cache is not None:
            self.cache.truncate(lo)  # keep the clean blocks only
        return logits


class BlockDiffusionSampler:
    """Fills the [MASK]s of a template (B, T) block by block; ``sampler`` (ancestral, remask, threshold)
    runs inside each block with ``steps`` (per block, default ``block_size``) or ``threshold``."""

    def __init__(self, block_size: int, sampler: str = "ancestral", *, mask_id: int,
                 processor: LogitsProcessor | None = None, steps: int | None = None,
                 threshold: float | None = None, use_cache: bool = True):
        if block_size < 1:
            raise SamplingError(f"block size must be at least 1, got {block_size}")
        if sampler not in BLOCK_SAMPLER_OPTIONS:
            raise SamplingError(f"unknown sampler {sampler!r}; choose from {', '.join(BLOCK_SAMPLER_OPTIONS)}")
        given = {k: v for k, v in (("steps", steps), ("threshold", threshold)) if v is not None}
        wrong = sorted(set(given) - set(BLOCK_SAMPLER_OPTIONS[sampler]))
        if wrong:
            raise SamplingError(f"sampler {sampler!r} takes no {' or '.join(wrong)} option in block diffusion")
        if sampler != "threshold":
            given.setdefault("steps", block_size)
        self.block_size, self.name, self.options, self.use_cache = block_size, sampler, given, use_cache
        self.mask_id, self.processor = mask_id, processor
        self.inner(block_size)  # refuses bad settings now, before any pass

    def check(self, num_masked: int) -> None:
        """As ``DiffusionSampler.check``: refuse a template without [MASK] before any pass (the inner
        sampler's settings were checked at construction)."""
        if num_masked < 1:
            raise SamplingError("the template has no [MASK] position to generate")

    def inner(self, num_masked: int):
        """The diffusion sampler for a block with ``num_masked`` [MASK]s."""
        from models.sampling import build_sampler  # models.sampling imports this module

        options = dict(self.options)
        if self.name == "remask":
            options["steps"] = min(options["steps"], num_masked)
        return build_sampler(self.name, mask_id=self.mask_id, processor=self.processor, **options)

    @torch.no_grad()
    def __call__(self, model: nn.Module, template: torch.Tensor,
                 generator: torch.Generator | None = None) -> SampleResult:
        """``model``: a backbone taking ``cache``, ``mask`` and ``logits_to_keep`` (``Transformer``)."""
        if template.dim() != 2:
            raise SamplingError(f"template must have shape (B, T), got {tuple(template.shape)}")
        T = template.shape[1]
        max_len = getattr(getattr(model, "config", None), "seq_len", None)
        if max_len is not None and T > max_len:
            raise SamplingError(f"template of {T} tokens exceeds the model's seq_len={max_len}")
        self.check(int((template == self.mask_id).sum(dim=1).max()))
        x, b = template.clone(), self.block_size
        cache = KVCache() if self.use_cache and getattr(model, "supports_kv_cache", False) else None
        passes, committed = 0, []
        for k in range(-(-T // b)):
            lo, hi = k * b, min(T, (k + 1) * b)
            masked = x[:, lo:hi] == self.mask_id  # (B, n)
            if not masked.any():
                continue  # clean context; cached by the next denoising pass
            counts = masked.sum(dim=1)
            if counts.min() != counts.max():
                raise SamplingError(f"every template row needs the same number of [MASK]s in block {k}")
            denoiser = BlockDenoiser(model, x[:, :lo], k, b, cache)
            result = self.inner(int(counts[0]))(denoiser, x[:, lo:hi], generator)
            x[:, lo:hi] = result.tokens
            passes += result.forward_passes
            committed += list(result.committed)
        return SampleResult(x, passes, torch.stack(committed))
