"""Left-to-right generation from a causal model, with a KV cache when the attention kind has one.

The AR objective trains on input ``[START] + x[:-1]`` against target ``x`` (start = [EOD]), so the
model is fed ``[START] + prompt`` and each step appends one token drawn from the logits of the last
position. With a KV cache the first pass encodes the whole context and every later pass only the
newest token; without one (``model.supports_kv_cache`` False, or ``use_cache=False``) every step
recomputes the full sequence. Both paths compute the same logits, so greedy outputs agree.

Shapes: B batch, P prompt, L new tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from models.sampling.base import LogitsProcessor, SampleResult, SamplingError
from models.transformer import KVCache


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, length: int, *, start_id: int,
             processor: LogitsProcessor | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> SampleResult:
    """Continue ``prompt`` (B, P) by ``length`` tokens; returns tokens (B, P + L) without the start token.

    ``model`` maps ids (B, T) (and an optional ``cache``) to logits (B, T, V); one forward pass per
    new token. P may be 0 (unconditional). ``processor`` should suppress [MASK] and [PAD], which the
    AR model never learned to emit (``experiments.sampling.make_processor``); the default suppresses
    nothing.
    """
    processor = processor or LogitsProcessor()
    if length < 1:
        raise SamplingError(f"length must be at least 1, got {length}")
    B, P = prompt.shape
    max_len = getattr(getattr(model, "config", None), "seq_len", None)
    if max_len is not None and P + length > max_len:
        raise SamplingError(f"prompt ({P}) + length ({length}) tokens exceed the model's seq_len={max_len}")
    seq = torch.cat([torch.full((B, 1), start_id, dtype=torch.long, device=prompt.device), prompt], dim=1)
    cache = KVCache() if use_cache and getattr(model, "supports_kv_cache", False) else None
    step_input = seq  # (B, 1 + P): the whole context on the first pass
    for _ in range(length):
        logits = model(step_input, cache=cache) if cache is not None else model(seq)  # (B, t, V)
        token, _ = processor.draw(logits[:, -1], generator)  # (B,)
        seq = torch.cat([seq, token[:, None]], dim=1)
        step_input = token[:, None]  # (B, 1): only the new token once its predecessors are cached
    committed = torch.ones(length, B, dtype=torch.long)
    return SampleResult(seq[:, 1:], forward_passes=length, committed=committed)
