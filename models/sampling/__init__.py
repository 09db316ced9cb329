"""Samplers: AR generation with a KV cache, three masked-diffusion samplers behind one interface, and
block diffusion (``BlockDiffusionSampler``: blocks left to right, one of the three inside each block).

A diffusion sampler is called as ``sampler(model, template, generator) -> SampleResult``, where the
template (B, T) holds [MASK] wherever to generate: a prompt followed by [MASK]s, or fixed tokens
anywhere (infilling). ``build_sampler`` makes one by name from the options that apply to it.
"""

from __future__ import annotations

from models.sampling.ancestral import AncestralSampler
from models.sampling.autoregressive import generate
from models.sampling.base import DiffusionSampler, LogitsProcessor, SampleResult, SamplingError
from models.sampling.block import BLOCK_SAMPLER_OPTIONS, BlockDiffusionSampler
from models.sampling.remask import RemaskSampler
from models.sampling.threshold import ThresholdSampler

SAMPLERS: dict[str, type[DiffusionSampler]] = {
    AncestralSampler.name: AncestralSampler,
    RemaskSampler.name: RemaskSampler,
    ThresholdSampler.name: ThresholdSampler,
}

#: the options each diffusion sampler accepts besides ``mask_id`` and ``processor``
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "ancestral": ("steps",),
    "remask": ("steps", "block_length"),
    "threshold": ("threshold", "block_length"),
}


def build_sampler(name: str, *, mask_id: int, processor: LogitsProcessor | None = None,
                  **options: int | float | None) -> DiffusionSampler:
    """The sampler ``name`` with ``options`` (None values are left at their defaults); an option
    that does not apply to it is refused."""
    if name not in SAMPLERS:
        raise SamplingError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(set(given) - set(SAMPLER_OPTIONS[name]))
    if wrong:
        raise SamplingError(f"sampler {name!r} takes no {' or '.join(wrong)} option "
                            f"(it takes: {', '.join(SAMPLER_OPTIONS[name])})")
    return SAMPLERS[name](mask_id=mask_id, processor=processor, **given)


__all__ = ["BLOCK_SAMPLER_OPTIONS", "SAMPLERS", "SAMPLER_OPTIONS", "AncestralSampler", "BlockDiffusionSampler",
           "DiffusionSampler", "LogitsProcessor",
           "RemaskSampler", "SampleResult", "SamplingError", "ThresholdSampler", "build_sampler", "generate"]
