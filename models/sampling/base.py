"""What every sampler shares: the result record, logit processing and float64 categorical draws.

Logits are processed in float64 throughout: low-precision Gumbel noise lowers the effective
temperature (arXiv:2409.02908; LLaDA, Fast-dLLM and dllm sample in float64). Suppressed ids
([MASK], [PAD], optionally [EOD]) get logit -inf before anything else, so they are never drawn and
carry no probability mass in the confidences.

Shapes: B batch, T sequence, N selected positions, V vocabulary, S steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


class SamplingError(ValueError):
    """Sampler settings that cannot apply (steps, block length, threshold, lengths), one line."""


@dataclass
class SampleResult:
    """Generated tokens and what producing them cost."""

    tokens: torch.Tensor  # (B, T) int64: the template with every [MASK] filled (AR: prompt + continuation)
    forward_passes: int  # model calls, each on the whole batch
    committed: torch.Tensor  # (S, B) int64: tokens committed at each step, per sample

    @property
    def generated(self) -> float:
        """Tokens generated per sample (mean over the batch)."""
        return self.committed.sum().item() / self.tokens.shape[0]

    @property
    def tokens_per_pass(self) -> float:
        """Generated tokens per sample per forward pass (1.0 for AR)."""
        return self.generated / max(self.forward_passes, 1)


@dataclass(frozen=True)
class LogitsProcessor:
    """Turns logits (..., V) into tokens: suppression, temperature, top-k, top-p, float64 draws."""

    suppress_ids: Sequence[int] = ()
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SamplingError(f"top-p must lie in (0, 1], got {self.top_p}")

    def suppress(self, logits: torch.Tensor) -> torch.Tensor:
        """float64 copy of ``logits`` with the suppressed ids at -inf: the model's own distribution."""
        out = logits.double()
        if self.suppress_ids:
            out[..., list(self.suppress_ids)] = float("-inf")
        return out

    def truncate(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` restricted to the top-k tokens and then to the top-p nucleus (-inf elsewhere)."""
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]  # (..., 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # drop a token once the tokens ranked before it hold top_p of the mass (the first always stays)
            drop_sorted = probs.cumsum(dim=-1) - probs >= self.top_p
            logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        return logits

    def draw(self, logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (...,) from logits (..., V) and their confidence (...,) float64.

        Tokens follow HF's order: suppress, divide by the temperature, top-k, top-p, then a float64
        Gumbel-max draw, written as argmax(q / E) with E ~ Exp(1) (= argmax(log q + Gumbel)); at
        temperature 0 the argmax of the suppressed logits. The confidence is the probability of the
        drawn token under the suppressed, untempered, untruncated distribution (LLaDA / Fast-dLLM:
        ``softmax(logits)[x0]``).
        """
        logits = self.suppress(logits)
        probs = logits.softmax(dim=-1)  # (..., V) float64
        if self.temperature == 0:
            tokens = logits.argmax(dim=-1)
        else:
            plain = self.temperature == 1 and self.top_k is None and self.top_p is None
            q = probs if plain else self.truncate(logits / self.temperature).softmax(dim=-1)
            e = noise(q.shape, generator, q.device, exponential=True).clamp_min(torch.finfo(torch.float64).tiny)
            tokens = (q / e).argmax(dim=-1)
        return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          exponential: bool = False) -> torch.Tensor:
    """float64 U(0, 1) (or Exp(1)) draws of ``shape``, made on the generator's device, returned on ``device``."""
    out = torch.empty(shape, dtype=torch.float64, device=generator.device if generator is not None else device)
    out = out.exponential_(generator=generator) if exponential else out.uniform_(generator=generator)
    return out.to(device)


def even_split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal integers, the larger ones first (LLaDA's schedule)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def block_ids(masked: torch.Tensor, block_length: int) -> torch.Tensor:
    """Semi-autoregressive block of every [MASK] position (B, T) long, -1 at fixed positions.

    Blocks count masked positions left to right: the first ``block_length`` [MASK]s of a row form
    block 0, the next ones block 1, and so on. With a prompt followed by [MASK]s these are LLaDA's
    contiguous blocks; with an infill template the fixed tokens between them do not count.
    """
    rank = masked.long().cumsum(dim=1) - 1  # (B, T): index of each [MASK] among its row's [MASK]s
    return torch.where(masked, rank // block_length, torch.full_like(rank, -1))


class DiffusionSampler(ABC):
    """Fills the [MASK] positions of a template (B, T) with a bidirectional model.

    Subclasses implement ``_sample`` and write only at [MASK] positions, so prompt and infill tokens
    come back unchanged; ``__call__`` checks the template and counts the forward passes. The
    processor must suppress [MASK]; pass one that also suppresses [PAD] (``experiments.sampling``
    suppresses both, and [EOD] on request).
    """

    name: str

    def __init__(self, *, mask_id: int, processor: LogitsProcessor | None = None):
        self.mask_id = mask_id
        self.processor = processor or LogitsProcessor(suppress_ids=(mask_id,))
        if mask_id not in self.processor.suppress_ids:
            raise SamplingError(f"the processor must suppress the [MASK] id {mask_id}")

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> SampleResult:
        """``model`` maps ids (B, T) to logits (B, T, V); ``x`` (B, T) holds [MASK] where to generate."""
        if x.dim() != 2:
            raise SamplingError(f"template must have shape (B, T), got {tuple(x.shape)}")
        masked = x == self.mask_id  # (B, T)
        counts = masked.sum(dim=1)
        if counts.min() != counts.max():
            raise SamplingError("every template row needs the same number of [MASK] positions")
        self.check(int(counts[0]))
        passes = 0

        def forward(ids: torch.Tensor) -> torch.Tensor:
            nonlocal passes
            passes += 1
            return model(ids)  # (B, T, V)

        tokens, committed = self._sample(forward, x.clone(), masked, int(counts[0]), generator)
        return SampleResult(tokens, passes, torch.stack(committed).cpu())

    def check(self, num_masked: int) -> None:
        """Refuse, before any forward pass, settings that cannot fill ``num_masked`` [MASK]s per row."""
        if num_masked < 1:
            raise SamplingError("the template has no [MASK] position to generate")

    @abstractmethod
    def _sample(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, masked: torch.Tensor,
                num_masked: int, generator: torch.Generator | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fill the [MASK]s of ``x`` (B, T) (``masked``, ``num_masked`` per row) calling ``forward``;
        returns the filled tokens and the tokens committed at each step, one (B,) tensor per step."""

    def _propose(self, logits: torch.Tensor, where: torch.Tensor,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws at the positions ``where`` (B, T) from logits (B, T, V): tokens (B, T) (0 elsewhere)
        and float64 confidences (B, T) (-inf elsewhere)."""
        picked, conf = self.processor.draw(logits[where], generator)  # (N,), (N,)
        tokens = torch.zeros(where.shape, dtype=torch.long, device=logits.device)
        confidence = torch.full(where.shape, float("-inf"), dtype=torch.float64, device=logits.device)
        tokens[where], confidence[where] = picked, conf
        return tokens, confidence


def most_confident(confidence: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` highest finite confidences of each row (B, T) as a bool mask (B, T); ties go left."""
    order = confidence.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)  # (B, T): 0 for the most confident position of the row
    return (rank < n) & (confidence > float("-inf"))
