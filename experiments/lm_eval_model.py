"""lm-evaluation-harness adapter: our AR and diffusion checkpoints as a registered lm-eval model.

``CrossoverLM`` (registered as ``crossover``) loads a run folder, a ``.ckpt`` or an exported folder
(``experiments.checkpoint.load_checkpoint``) and answers lm-eval's three request types:

* ``loglikelihood(context, continuation)``. Both models see ``[EOD] + context + continuation``
  ([EOD] is the document separator that precedes every document in the packed training stream,
  and the AR model's start token).
  - AR: the exact log-probability of the continuation, sum_j log p(c_j | [EOD], context, c_<j), and
    whether greedy decoding would produce it.
  - Diffusion: LLaDA's Monte Carlo conditional ELBO. Only continuation tokens are masked: K draws
    (``mc_samples``, default 32) with stratified mask counts l_k = ceil((u + k) / K * L) of the L
    continuation tokens (u ~ U(0, 1)), uniformly placed; each draw scores (L / l_k) * sum of the
    masked tokens' CE, and the log-likelihood is minus the mean over draws (a lower bound on
    log p(continuation | context) in expectation). Its Monte Carlo standard error (std over draws /
    sqrt(K), conservative under stratification) is kept in ``mc_estimates``. Draws are seeded by
    (``seed``, the request's tokens), so a request scores the same in any batch or order.
    ``is_greedy``: every continuation token is the argmax when the whole continuation is masked.
* ``loglikelihood_rolling(text)`` (perplexity tasks): lm-eval's disjoint rolling windows of the
  model's length, each conditioned on the token before it ([EOD] for the first; the last, shorter
  window on as many tokens as fill the window), summed; for the diffusion model each window's
  conditional ELBO (standard errors added in quadrature).
* ``generate_until(context, gen_kwargs)``: AR through ``models.sampling.generate`` (KV cache);
  diffusion through a ``models.sampling`` sampler (``sampler``, default ``remask`` with one token per
  step) on the template ``[EOD] + context + [MASK] * n``. Greedy unless ``temperature`` is given;
  the text is cut at [EOD] and at the first ``until`` string.

Contexts longer than the model's window are cut from the left; a continuation too long for the
window is scored in chunks of half the window, each conditioned on the tokens before it that fit
(``split_request``); the chunks' log-likelihoods add up.

Shapes: K draws, L continuation tokens, T window, V vocabulary, B batch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from experiments.checkpoint import LoadedRun, load_checkpoint
from models.objectives import objective_class
from models.sampling import SAMPLER_OPTIONS, SAMPLERS, LogitsProcessor, build_sampler, generate

#: lm-eval model name of ``CrossoverLM``
MODEL_NAME = "crossover"
#: decodings the adapter scores (left to right exactly, parallel masked diffusion by its conditional ELBO)
SCORED_DECODINGS = ("left_to_right", "parallel")


class EvalError(ValueError):
    """A request or setting the adapter cannot serve, with a one-line reason."""


@dataclass
class ElboEstimate:
    """Monte Carlo conditional ELBO of one continuation: log-likelihood (nats, a lower bound in
    expectation), its standard error, and the number of continuation tokens."""

    loglikelihood: float
    stderr: float
    tokens: int
    greedy: bool = False


# --------------------------------------------------------------------------- windows
def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a parameter-free module)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def fit_window(context: list[int], continuation: list[int], window: int) -> tuple[list[int], list[int]]:
    """Cut ``context`` from the left so ``context + continuation`` holds at most ``window`` tokens."""
    if len(continuation) > window:
        raise EvalError(f"a continuation of {len(continuation)} tokens does not fit the model's window of {window}")
    keep = window - len(continuation)
    return (context[-keep:] if keep else []), continuation


def split_request(context: list[int], continuation: list[int], window: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) pieces that each fit ``window`` tokens: one piece with the context cut
    from the left when the continuation leaves room for a token of context; otherwise the
    continuation in chunks of ``window // 2``, each conditioned on the ``window - chunk`` tokens
    before it (the chain rule with a truncated context, as rolling windows do)."""
    if len(continuation) < window:
        return [fit_window(context, continuation, window)]
    size, tokens, pieces = window // 2, context + continuation, []
    for start in range(len(context), len(tokens), size):
        chunk = tokens[start : start + size]
        pieces.append((tokens[max(0, start - (window - len(chunk))) : start], chunk))
    return pieces


def rolling_pairs(tokens: list[int], start_id: int, window: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling (context, continuation) windows of ``tokens``, context + continuation
    at most ``window + 1`` tokens (AR: the model input is that minus its last token)."""
    windows = get_rolling_token_windows(token_list=tokens, prefix_token=start_id, max_seq_len=window, context_len=1)
    return [make_disjoint_window(w) for w in windows]


# --------------------------------------------------------------------------- AR: exact
@torch.no_grad()
def ar_loglikelihoods(model: torch.nn.Module, pairs: list[tuple[list[int], list[int]]], *, pad_id: int,
                      batch_size: int = 16) -> list[tuple[float, bool]]:
    """Exact (log p(continuation | context), greedy?) for each (context, continuation); contexts
    start with the start token. Sequences are right-padded in batches (causal: padding after a
    position cannot change it)."""
    seq_len, device = model.config.seq_len, model_device(model)
    fitted = [fit_window(c, x, seq_len + 1) for c, x in pairs]  # the input drops the last token
    order = sorted(range(len(pairs)), key=lambda i: -len(fitted[i][0]) - len(fitted[i][1]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = [(fitted[i][0] + fitted[i][1])[:-1] for i in chunk]
        width = max(len(s) for s in inputs)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for r, s in enumerate(inputs):
            ids[r, : len(s)] = torch.tensor(s)
        logp = model(ids.to(device)).float().log_softmax(dim=-1)  # (B, T, V)
        for r, i in enumerate(chunk):
            cont = torch.tensor(fitted[i][1], device=device)
            rows = logp[r, len(inputs[r]) - len(cont) : len(inputs[r])]  # (L, V)
            ll = rows.gather(-1, cont[:, None]).double().sum().item()
            out[i] = (ll, bool((rows.argmax(dim=-1) == cont).all()))
    return out


# --------------------------------------------------------------------------- diffusion: Monte Carlo ELBO
def request_generator(seed: int, context: list[int], continuation: list[int]) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the request's tokens (same draws in any batch or order)."""
    digest = hashlib.sha256(np.asarray([seed, -1, *context, -1, *continuation], dtype=np.int64).tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def continuation_masks(length: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """(K, L) bool masks: draw k masks l_k = ceil((u + k) / K * L) of the L positions, uniformly placed."""
    u = torch.rand(1, generator=generator, dtype=torch.float64)
    counts = torch.ceil((u + torch.arange(draws, dtype=torch.float64)) / draws * length).clamp(1, length)  # (K,)
    rank = torch.rand(draws, length, generator=generator).argsort(dim=1).argsort(dim=1)  # (K, L) random ranks
    return rank < counts[:, None]


@torch.no_grad()
def diffusion_elbo(model: torch.nn.Module, context: list[int], continuation: list[int], *, mask_id: int,
                   mc_samples: int, generator: torch.Generator, batch_size: int = 16) -> ElboEstimate:
    """Monte Carlo conditional ELBO of ``continuation`` given ``context`` (LLaDA's estimator; see the
    module docstring): K masked copies plus one fully masked copy for ``greedy``."""
    if mc_samples < 1:
        raise EvalError(f"mc_samples must be at least 1, got {mc_samples}")
    if not continuation:
        return ElboEstimate(0.0, 0.0, 0, True)
    context, continuation = fit_window(context, continuation, model.config.seq_len)
    P, L, device = len(context), len(continuation), model_device(model)
    masks = torch.cat([continuation_masks(L, mc_samples, generator), torch.ones(1, L, dtype=torch.bool)])  # (K+1, L)
    target = torch.tensor(continuation)
    xs = torch.tensor(context + continuation).repeat(mc_samples + 1, 1)  # (K+1, P+L)
    xs[:, P:] = torch.where(masks, torch.full_like(target, mask_id), target)
    ce, greedy = [], []
    for start in range(0, len(xs), batch_size):
        logp = model(xs[start : start + batch_size].to(device))[:, P:].float().log_softmax(dim=-1)  # (B, L, V)
        ce.append(-logp.gather(-1, target.to(device).expand(len(logp), L)[..., None]).squeeze(-1).double().cpu())
        greedy.append((logp.argmax(dim=-1).cpu() == target).all(dim=1))
    ce_all = torch.cat(ce)  # (K+1, L)
    est = (ce_all[:-1] * masks[:-1]).sum(dim=1) * L / masks[:-1].sum(dim=1)  # (K,) weighted draws
    se = est.std().item() / math.sqrt(mc_samples) if mc_samples > 1 else float("nan")
    return ElboEstimate(-est.mean().item(), se, L, bool(torch.cat(greedy)[-1]))


# --------------------------------------------------------------------------- generation
def generation_length(prompt: int, wanted: int, window: int) -> tuple[int, int]:
    """(tokens to generate, prompt tokens kept) within ``window``: the prompt is cut from the left,
    never below half the window while the generation needs room."""
    n = max(1, min(wanted, max(window - prompt, window // 2)))
    return n, min(prompt, window - n)


def cut_at_stops(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    ends = [text.find(s) for s in until if s and s in text]
    return text[: min(ends)] if ends else text


# --------------------------------------------------------------------------- the lm-eval model
@register_model(MODEL_NAME)
class CrossoverLM(TemplateLM):
    """A crossover run (folder, ``.ckpt`` or export) as an lm-eval model; see the module docstring.

    ``model_args``: ``pretrained`` (path, or a ``LoadedRun``), ``batch_size``, ``device``,
    ``mc_samples`` (diffusion ELBO draws), ``seed``, ``sampler`` / ``steps`` / ``block_length`` /
    ``threshold`` (diffusion generation), ``max_gen_toks``, ``temperature`` (generation; 0 greedy).
    """

    def __init__(self, pretrained: str | LoadedRun, batch_size: int | str = 16, device: str = "cpu",
                 mc_samples: int = 32, seed: int = 1234, sampler: str = "remask", steps: int | None = None,
                 block_length: int | None = None, threshold: float | None = None, max_gen_toks: int = 64,
                 temperature: float = 0.0, **_: Any):
        super().__init__()
        if sampler not in SAMPLERS:
            raise EvalError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        if int(mc_samples) < 1:
            raise EvalError(f"mc_samples must be at least 1, got {mc_samples}")
        self.run = pretrained if isinstance(pretrained, LoadedRun) else load_checkpoint(pretrained)
        if objective_class(self.run.objective).decoding not in SCORED_DECODINGS:
            raise EvalError(f"objective {self.run.objective!r} has no lm-eval scoring yet; scored: objectives "
                            f"that decode {' or '.join(SCORED_DECODINGS)}")
        self._device = torch.device(device)
        self.model = self.run.model.to(self._device).eval()
        self.tokenizer = self.run.tokenizer
        self.objective = self.run.objective
        self.causal = objective_class(self.objective).causal  # exact NLL left to right, else the masked ELBO
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.mc_samples, self.seed = int(mc_samples), int(seed)
        self.sampler, self.steps, self.block_length, self.threshold = sampler, steps, block_length, threshold
        self.max_gen_toks, self.temperature = int(max_gen_toks), float(temperature)
        self.mc_estimates: list[ElboEstimate] = []  # every diffusion ELBO computed, in call order

    # ---- lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.model.config.seq_len

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` (the start token is added by the scoring functions, not here)."""
        return self.tokenizer.encode(string, add_special_tokens=False)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)  # no redraws in log files

    # ---- scoring
    @property
    def window(self) -> int:
        """Tokens of context + continuation one pass scores: the AR input drops the last token."""
        return self.max_length + (1 if self.causal else 0)

    def score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[ElboEstimate]:
        """Log-likelihood of each (context, continuation), contexts starting with [EOD]: exact for
        AR (stderr 0), the Monte Carlo conditional ELBO for diffusion. A continuation longer than
        the window is scored in pieces (``split_request``) whose scores add up."""
        owner, pieces = [], []
        for i, (context, continuation) in enumerate(pairs):
            for piece in split_request(context, continuation, self.window):
                owner.append(i)
                pieces.append(piece)
        scores = self._score_pieces(pieces)
        out = [ElboEstimate(0.0, 0.0, 0, True) for _ in pairs]
        for i, e in zip(owner, scores):
            o = out[i]
            out[i] = ElboEstimate(o.loglikelihood + e.loglikelihood, math.hypot(o.stderr, e.stderr),
                                  o.tokens + e.tokens, o.greedy and e.greedy)
        self.mc_estimates += out if not self.causal else []
        return out

    def _score_pieces(self, pieces: list[tuple[list[int], list[int]]]) -> list[ElboEstimate]:
        """Scores of pieces that fit the window."""
        if self.causal:
            scores = ar_loglikelihoods(self.model, pieces, pad_id=self.tokenizer.pad_token_id,
                                       batch_size=self.batch_size)
            return [ElboEstimate(ll, 0.0, len(x), g) for (ll, g), (_, x) in zip(scores, pieces)]
        return [diffusion_elbo(self.model, c, x, mask_id=self.tokenizer.mask_token_id, mc_samples=self.mc_samples,
                               generator=request_generator(self.seed, c, x), batch_size=self.batch_size)
                for c, x in pieces]

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        eod = self.eot_token_id
        pairs = [(ctx if ctx[:1] == [eod] else [eod] + ctx, cont) for (_, ctx, cont) in requests]
        return [(e.loglikelihood, e.greedy) for e in self.score_tokens(pairs)]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Sum over disjoint rolling windows (AR: exact; diffusion: ELBO, standard errors in quadrature)."""
        out = []
        for (text,) in (r.args for r in requests):
            scores = self.score_tokens(rolling_pairs(self.tok_encode(text), self.eot_token_id, self.window - 1))
            out.append(sum(e.loglikelihood for e in scores))
        return out

    # ---- generation
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return [self.generate_one(context, dict(kwargs)) for context, kwargs in (r.args for r in requests)]

    @torch.no_grad()
    def generate_one(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """One continuation of ``context``: AR with a KV cache, diffusion with the configured sampler."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sample = gen_kwargs.get("do_sample", True)
        temperature = float(gen_kwargs.get("temperature", self.temperature)) if sample else 0.0
        tok = self.tokenizer
        ids = self.tok_encode(context)
        window = self.max_length - (0 if self.causal else 1)  # diffusion: [EOD] is in the template
        n, keep = generation_length(len(ids), int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)), window)
        prompt = torch.tensor(ids[len(ids) - keep :], dtype=torch.long, device=self._device)[None]  # (1, P)
        processor = LogitsProcessor((tok.mask_token_id, tok.pad_token_id), temperature)
        generator = torch.Generator(self._device).manual_seed(self.seed)
        if self.causal:
            result = generate(self.model, prompt, n, processor=processor, generator=generator,
                              start_id=tok.eos_token_id)
        else:
            start = torch.full((1, 1), tok.eos_token_id, dtype=torch.long, device=self._device)
            masks = torch.full((1, n), tok.mask_token_id, dtype=torch.long, device=self._device)
            options = {"steps": min(self.steps or n, n), "block_length": self.block_length, "threshold": self.threshold}
            sampler = build_sampler(self.sampler, mask_id=tok.mask_token_id, processor=processor,
                                    **{k: v for k, v in options.items() if k in SAMPLER_OPTIONS[self.sampler]})
            result = sampler(self.model, torch.cat([start, prompt, masks], dim=1), generator)
        new = result.tokens[0, -n:].tolist()
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        return cut_at_stops(tok.decode(new, skip_special_tokens=False), until)

    # ---- reporting
    def mc_summary(self) -> dict[str, float]:
        """Diffusion: draws per request, requests scored, mean Monte Carlo standard error of a request's
        log-likelihood and of its per-token value (empty for AR)."""
        if not self.mc_estimates:
            return {}
        se = [e.stderr for e in self.mc_estimates if e.tokens and not math.isnan(e.stderr)]
        per_token = [e.stderr / e.tokens for e in self.mc_estimates if e.tokens and not math.isnan(e.stderr)]
        return {"mc_samples": self.mc_samples, "mc_requests": len(self.mc_estimates),
                "mc_se_mean": float(np.mean(se)) if se else float("nan"),
                "mc_se_per_token_mean": float(np.mean(per_token)) if per_token else float("nan")}
