"""Attention kinds (registry) and the sparse-attention op."""

from models.attention import dense  # noqa: F401  (registers "dense")
from models.attention.registry import attention_kinds, build_attention, register_attention

__all__ = ["attention_kinds", "build_attention", "register_attention"]
