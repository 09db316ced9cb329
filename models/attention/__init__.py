"""Attention kinds (registry) and the sparse-attention op."""

from models.attention import dense, nsa, topk, window  # noqa: F401  (register "dense", "nsa", "topk", "window")
from models.attention.block_sparse import block_sparse_attention
from models.attention.registry import attention_kinds, build_attention, register_attention

__all__ = ["attention_kinds", "block_sparse_attention", "build_attention", "register_attention"]
