"""The sampler speed/quality frontier (``crossover bench sample``): drawn from the bench's rows only.

Each row is one decoding setting: ``model`` (the checkpoint's family, e.g. ``diffusion`` or
``block_diffusion-b4``), ``sampler`` ("ar" for the autoregressive reference, else the diffusion
sampler's name), ``steps`` or ``threshold``, ``forward_passes_per_token``, ``tokens_per_s``
and ``gen_nll`` (generative NLL of the samples under the AR model, nats/token). Samplers are drawn
in the order they first appear in the rows, one series per (model, sampler).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from analysis.table import atomic_write


def plot_frontier(rows: list[dict[str, Any]], out: Path, title: str) -> list[Path]:
    """Generative NLL against forward passes per token (left) and tokens/s (right); AR's point starred.

    The left panel labels each point with its steps or threshold; points that coincide there (e.g.
    thresholds a model never reaches) share one label. The right panel shows the same points."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    series = list(dict.fromkeys((r.get("model", ""), r["sampler"]) for r in rows if r["sampler"] != "ar"))
    several = len({m for m, _ in series}) > 1
    ar = next(r for r in rows if r["sampler"] == "ar")
    for ax, key, label in ((axes[0], "forward_passes_per_token", "forward passes per generated token"),
                           (axes[1], "tokens_per_s", "throughput (generated tokens/s, batch 1)")):
        for model, name in series:
            pts = sorted((r for r in rows if (r.get("model", ""), r["sampler"]) == (model, name)), key=lambda r: r[key])
            ax.plot([r[key] for r in pts], [r["gen_nll"] for r in pts], marker="o",
                    label=f"{model}: {name}" if several else name)
        ax.scatter([ar[key]], [ar["gen_nll"]], marker="*", s=220, color="black", zorder=5, label="AR (KV cache)")
        # passes per token fall on powers of two (steps = length/1, /2, /4, ...); plain numbers on both axes
        ax.set_xscale("log", base=2 if key == "forward_passes_per_token" else 10)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.12)
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    _label_points(axes[0], rows)
    axes[0].set_ylabel("generative NLL under the AR model (nats/token)")
    axes[0].legend()
    fig.suptitle(title)
    paths = [out / "bench_sample.png", out / "bench_sample.pdf"]
    for path in paths:
        atomic_write(path, lambda f, ext=path.suffix[1:]: fig.savefig(f, format=ext, dpi=150))
    return paths


def _label_points(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Label each point of the passes-per-token panel with its steps and/or thresholds."""
    steps: dict[tuple[float, float], list[str]] = {}
    taus: dict[tuple[float, float], list[float]] = {}
    for r in rows:
        xy = (r["forward_passes_per_token"], r["gen_nll"])
        if r["sampler"] == "threshold":
            taus.setdefault(xy, []).append(r["threshold"])
        elif r["sampler"] != "ar":  # block diffusion counts its steps per block
            steps.setdefault(xy, []).append(f"{r['steps']} {r.get('steps_unit', 'steps')}")
    lo, hi = (math.log(v) for v in ax.get_xlim())
    for xy in {**steps, **taus}:
        t = sorted(taus.get(xy, []))
        text = ", ".join(list(dict.fromkeys(steps.get(xy, [])))
                         + ([f"τ={t[0]:g}" + (f"…{t[-1]:g} ({len(t)})" if len(t) > 1 else "")] if t else []))
        right = (math.log(xy[0]) - lo) / (hi - lo) > 0.7  # label to the left of points near the right edge
        ax.annotate(text, xy, textcoords="offset points", xytext=(-4 if right else 4, 4),
                    ha="right" if right else "left", fontsize=7)
