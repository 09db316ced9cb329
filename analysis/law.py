"""Muennighoff et al.'s data-constrained scaling law (NeurIPS 2023; used by Prabhudesai et al. 2025).

All counts are raw numbers (tokens, parameters), never millions; N is the **non-embedding**
parameter count (contract 3); losses are in nats/token::

    L(N, U, D) = E + A / N'**alpha + B / D'**beta

    D    = tokens seen = U * epochs                              (tokens; epochs may be fractional)
    U_D  = min(U, D)                                             unique tokens actually seen
    R_D  = D / U_D - 1                                           repetitions: epochs - 1, and 0 within epoch 1
    D'   = U_D + U_D * R_D* * (1 - exp(-R_D / R_D*))             effective data (tokens)

    N_opt(U) = (alpha A / (beta B))**(1/alpha) * U**(beta/alpha)
             = G**(1 + beta/alpha) * U**(beta/alpha),  G = (alpha A / (beta B))**(1/(alpha + beta))
                                                             compute-optimal N for U tokens under
                                                             E + A/N^alpha + B/D^beta at fixed C = 6ND
                                                             (Muennighoff's D_to_N; = 0.051 U for their fit)
    U_N  = min(N, N_opt(U_D))                                    parameters the unique data can use
    R_N  = max(0, N / U_N - 1)                                   excess parameters, in units of U_N
    N'   = U_N + U_N * R_N* * (1 - exp(-R_N / R_N*))             effective parameters

The k-th repetition of the data is worth exp(-k / R_D*) of fresh data: after R_D* repetitions
(epochs = 1 + R_D*) one more is worth 1/e, and D' never exceeds U_D (1 + R_D*). R_N* plays the same
part for parameters beyond N_opt. R* = inf is the limit in which repeats (excess parameters) are
as good as fresh ones (D' = D, N' = N: Chinchilla's law).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

#: Muennighoff et al.'s fitted constants (huggingface/datablations README): a, b, e = log A, log B, log E.
MUENNIGHOFF = {"E": math.exp(0.6254804), "A": math.exp(6.255414), "alpha": 0.3526596, "B": math.exp(7.3049974),
               "beta": 0.3526596, "R_D_star": 15.387756, "R_N_star": 5.309743}


@dataclass(frozen=True)
class LawParams:
    """Parameters of the law (module docstring). R* = inf means repeats are as good as fresh data."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    R_D_star: float = math.inf
    R_N_star: float = math.inf

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> LawParams:
        names = [f.name for f in fields(cls)]
        return cls(**{k: float(v) for k, v in values.items() if k in names and v is not None})

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def saturate(r: np.ndarray, r_star: float) -> np.ndarray:
    """R* (1 - exp(-R / R*)), the effective number of repeats; R itself when R* is infinite."""
    r = np.asarray(r, dtype=float)
    if math.isinf(r_star):
        return r
    return r_star * -np.expm1(-r / r_star)


def unique_seen(unique_tokens: np.ndarray, tokens_seen: np.ndarray) -> np.ndarray:
    """U_D = min(U, D) in tokens."""
    return np.minimum(np.asarray(unique_tokens, dtype=float), np.asarray(tokens_seen, dtype=float))


def effective_data(unique_tokens: np.ndarray, tokens_seen: np.ndarray, r_d_star: float) -> np.ndarray:
    """D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)) in tokens, with U_D = min(U, D) and R_D = D / U_D - 1."""
    u_d = unique_seen(unique_tokens, tokens_seen)
    r_d = np.asarray(tokens_seen, dtype=float) / u_d - 1.0
    return u_d * (1.0 + saturate(r_d, r_d_star))


def compute_optimal_params(tokens: np.ndarray, p: LawParams) -> np.ndarray:
    """N_opt(U) = (alpha A / (beta B))**(1/alpha) U**(beta/alpha): non-embedding parameters for U tokens
    (at least 1; infinite without a parameter term, A = 0)."""
    tokens = np.asarray(tokens, dtype=float)
    if p.A <= 0:
        return np.full_like(tokens, math.inf)
    log_n = (math.log(p.alpha * p.A / (p.beta * p.B)) + p.beta * np.log(tokens)) / p.alpha
    return np.exp(np.clip(log_n, 0.0, 700.0))


def excess_params(params: np.ndarray, unique_tokens: np.ndarray, tokens_seen: np.ndarray,
                  p: LawParams) -> tuple[np.ndarray, np.ndarray]:
    """(U_N, R_N): usable parameters U_N = min(N, N_opt(U_D)) and excess R_N = N / U_N - 1 >= 0."""
    n = np.asarray(params, dtype=float)
    u_n = np.minimum(n, compute_optimal_params(unique_seen(unique_tokens, tokens_seen), p))
    return u_n, np.maximum(n / u_n - 1.0, 0.0)


def effective_params(params: np.ndarray, unique_tokens: np.ndarray, tokens_seen: np.ndarray,
                     p: LawParams) -> np.ndarray:
    """N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)) (non-embedding parameters)."""
    u_n, r_n = excess_params(params, unique_tokens, tokens_seen, p)
    return u_n * (1.0 + saturate(r_n, p.R_N_star))


def predict(params: np.ndarray, unique_tokens: np.ndarray, tokens_seen: np.ndarray, p: LawParams) -> np.ndarray:
    """L(N, U, D) in nats/token (module docstring); N non-embedding parameters, U and D in tokens.

    With A = 0 (a fit whose parameter term was folded into E) the N term is absent.
    """
    d_prime = effective_data(unique_tokens, tokens_seen, p.R_D_star)
    loss = p.E + p.B / d_prime**p.beta
    if p.A > 0:
        loss = loss + p.A / effective_params(params, unique_tokens, tokens_seen, p) ** p.alpha
    return loss


def value_of_repeats(epochs: np.ndarray, r_d_star: float) -> np.ndarray:
    """Effective unique data D'/U = 1 + R_D* (1 - exp(-(epochs - 1) / R_D*)) for epochs >= 1 (= epochs for
    fresh data); below one epoch, D'/U = epochs."""
    e = np.asarray(epochs, dtype=float)
    return np.where(e < 1.0, e, 1.0 + saturate(np.maximum(e - 1.0, 0.0), r_d_star))
