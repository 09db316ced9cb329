"""Typed backbone configuration and the named preset registry.

One config describes both the autoregressive (``causal=True``) and the masked-diffusion
(``causal=False``) model: they differ only in that flag and in the objective that trains them.
Every field carries a ``help`` string in its metadata, which the CLI turns into ``--help`` text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


#: where dropout acts (each a ModelConfig field; ``dropout`` is the default of the ones left None)
DROPOUT_SITES = ("resid_dropout", "attn_dropout", "embd_dropout")


@dataclass
class ModelConfig:
    """Shape of the shared transformer backbone (pre-norm, RMSNorm, RoPE, SwiGLU, tied embeddings)."""

    vocab_size: int = _f(4096, "vocabulary size including special tokens (set from the tokenizer)")
    seq_len: int = _f(128, "maximum sequence length (tokens per training sequence)")
    n_layer: int = _f(4, "number of transformer blocks")
    n_head: int = _f(4, "number of query heads")
    n_kv_head: int | None = _f(None, "key/value heads for grouped-query attention (None: = n_head)")
    d_model: int = _f(128, "residual stream width")
    d_ff: int | None = _f(None, "SwiGLU hidden width (None: 8/3 * d_model rounded up to a multiple of 32)")
    rope_theta: float = _f(10000.0, "RoPE base frequency")
    norm_eps: float = _f(1e-6, "RMSNorm epsilon")
    dropout: float = _f(0.0, "dropout of every site below that is not set on its own")
    resid_dropout: float | None = _f(None, "dropout on the attention and MLP outputs before each residual add "
                                           "(None: dropout)")
    attn_dropout: float | None = _f(None, "dropout on the attention probabilities, dense attention only "
                                          "(None: dropout)")
    embd_dropout: float | None = _f(None, "dropout on the token embeddings (None: dropout)")
    init_std: float = _f(0.02, "std of the normal initialisation (residual projections scaled by 1/sqrt(2*n_layer))")
    causal: bool = _f(True, "causal mask (autoregressive) or bidirectional (masked diffusion)")
    attention: str = _f("dense", "attention kind from the registry (dense, window, nsa, topk)")
    attn_block: int = _f(64, "block size in tokens for block-sparse attention kinds")
    attn_topk: int = _f(4, "number of key blocks selected per query block (nsa, topk)")
    attn_window: int = _f(128, "sliding-window size in tokens (window, nsa)")
    attn_stride: int | None = _f(None, "NSA compression stride in tokens (None: = attn_block // 2)")

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for site in DROPOUT_SITES:
            if getattr(self, site) is None:
                setattr(self, site, self.dropout)
        if self.d_ff is None:
            self.d_ff = 32 * -(-(8 * self.d_model // 3) // 32)
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "attn_block",
                     "attn_topk", "attn_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("dropout", *DROPOUT_SITES):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_head} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Named presets. ``tiny`` is for tests; ``small`` matches the CPU probes (d128 x 4); ``base`` is the
#: largest that still trains on a laptop CPU. The ``p*`` presets follow Prabhudesai et al.'s
#: Chinchilla-style family (d_ff = floor(8h/3 / 64) * 64, sequence 2048) for GPU sweeps.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, d_model=64, seq_len=128),  # N = 107k non-embedding parameters
    # between tiny and small, so that parameters per unique token span ~1-30 at U = 25k-400k on a CPU
    "n220k": dict(n_layer=2, n_head=2, d_model=96, seq_len=128),
    "n400k": dict(n_layer=2, n_head=2, d_model=128, seq_len=128),
    "n600k": dict(n_layer=3, n_head=2, d_model=128, seq_len=128),
    "small": dict(n_layer=4, n_head=4, d_model=128, seq_len=128),  # N = 804k
    "base": dict(n_layer=6, n_head=6, d_model=384, seq_len=256),
    "p125m": dict(n_layer=12, n_head=12, d_model=768, d_ff=2048, seq_len=2048),  # GPT-2-small shape, benchmarks
    "p7m": dict(n_layer=4, n_head=4, d_model=256, d_ff=640, seq_len=2048),
    "p44m": dict(n_layer=8, n_head=8, d_model=512, d_ff=1344, seq_len=2048),
    "p140m": dict(n_layer=15, n_head=12, d_model=768, d_ff=2048, seq_len=2048),
    "p425m": dict(n_layer=24, n_head=16, d_model=1024, d_ff=2688, seq_len=2048),
    "p1b": dict(n_layer=24, n_head=16, d_model=2048, d_ff=5440, seq_len=2048),
}
