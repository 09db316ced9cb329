"""The attention registry: every attention *kind* is an ``nn.Module`` built from a ``ModelConfig``.

A kind is the part of self-attention after the q/k/v projections and RoPE and before the output
projection. Its ``forward(q, k, v, x)`` takes

    q: (B, Hq, Tq, D)   rotated queries
    k: (B, Hkv, Tk, D)  rotated keys (Hq is a multiple of Hkv: grouped-query attention)
    v: (B, Hkv, Tk, D)
    x: (B, Tq, C)       the block's normalised input (for kinds with gates, e.g. NSA)

and returns (B, Hq, Tq, D). Normally Tq == Tk; a kind with ``supports_kv_cache = True`` also
accepts Tq < Tk, the queries being the last Tq positions (incremental decoding). Kinds read the
mask direction from ``config.causal`` so the same kind serves the AR and the diffusion model.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.config import ModelConfig

_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding an attention kind under ``name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"attention kind {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def attention_kinds() -> list[str]:
    return sorted(_REGISTRY)


def supports_mask(name: str) -> bool:
    """Whether the attention kind ``name`` takes an explicit mask (``supports_mask``; block diffusion)."""
    return bool(getattr(_REGISTRY[name], "supports_mask", False))


def attention_params(config: ModelConfig) -> int:
    """Parameters of one layer's attention kind (a kind with weights defines ``param_count(config)``)."""
    return getattr(_REGISTRY[config.attention], "param_count", lambda c: 0)(config)


def build_attention(config: ModelConfig) -> nn.Module:
    try:
        factory = _REGISTRY[config.attention]
    except KeyError:
        raise KeyError(
            f"unknown attention kind {config.attention!r}; choose from {', '.join(attention_kinds())}"
        ) from None
    return factory(config)
