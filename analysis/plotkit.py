"""Shared figure machinery: the project style, number formats, colours, bounded panel grids and titles.

Every figure of ``analysis.plots`` is built from these, so that all of them scale the same way
from one to ~40 budgets and one to ~20 model sizes:

* **size**: at most ``MAX_COLS`` x ``MAX_ROWS`` panels of ``PANEL_W`` x ``PANEL_H`` inches (at the
  style's 160 dpi a figure stays under ~2000 px on its longer side); more budgets or models are
  shown as small multiples of a subset chosen evenly along the sorted values (``select_evenly``);
* **budgets** are coloured on one continuous log scale (viridis, ``BudgetColors``) explained by a
  colour bar, never by one legend entry per budget;
* **families** (AR, diffusion, block diffusion b=k, ...) have fixed colours, markers and line styles
  (``family_style``) and one figure-level legend outside the panels;
* **titles** are wrapped to the width they have (``wrap``), so they never run into a neighbour.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

STYLE_PATH = Path(__file__).with_name("crossover.mplstyle")
PANEL_W, PANEL_H = 3.6, 2.75  # inches per panel
MAX_COLS, MAX_ROWS = 3, 3
MAX_PANELS = MAX_COLS * MAX_ROWS
TITLE_PT, PANEL_TITLE_PT = 10.0, 9.0

COMPUTE_LABEL = "compute C = 6ND (FLOPs)"
LOSS_LABEL = "validation loss (nats/token)"
EPOCHS_LABEL = "epochs (tokens seen / U)"
BUDGET_LABEL = "unique tokens U"


@contextlib.contextmanager
def style_context() -> Iterator[None]:
    """Apply the project style (``plt.style.use`` scoped to the block) and restore rcParams after."""
    with matplotlib.style.context(STYLE_PATH):
        yield


# --------------------------------------------------------------------------- numbers
def format_tokens(n: float) -> str:
    """Compact count: 25000000 -> '25M', 1.5e9 -> '1.5B', 500000 -> '500k'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def format_sci(x: float) -> str:
    """Three significant digits, exponent without '+': 3.14e18."""
    return f"{x:.3g}".replace("e+", "e")


def format_epochs(x: float) -> str:
    """Epoch counts as written: 4, 0.5, 1.25, 800."""
    return f"{x:.4g}"


def _tick_sci(x: float, _pos: object = None) -> str:
    if x <= 0:
        return ""
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = x / 10**exponent
    return f"1e{exponent}" if abs(mantissa - 1) < 1e-6 else f"{mantissa:.2g}e{exponent}"


def _tick_count(x: float, _pos: object = None) -> str:
    return format_tokens(x) if x >= 1000 else f"{x:g}"


def log_axis(ax: Axes, axis: str = "x", kind: str = "count") -> None:
    """Log scale with compact labels on major ticks only (1, 2, 5 per decade when it spans < 2 decades).

    ``kind``: "count" (1, 10, 1k, 25M) or "sci" (1e18, 3e19).
    """
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.dataLim.intervalx if axis == "x" else ax.dataLim.intervaly
    decades = math.log10(max(hi, 1e-300) / max(lo, 1e-300)) if lo > 0 and hi > 0 else 3.0
    subs = (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    target.set_major_locator(LogLocator(base=10, subs=subs, numticks=6))
    target.set_major_formatter(FuncFormatter(_tick_sci if kind == "sci" else _tick_count))
    target.set_minor_formatter(NullFormatter())


# --------------------------------------------------------------------------- layout and text
def select_evenly(values: Sequence, k: int = MAX_PANELS) -> list:
    """At most ``k`` of the sorted ``values``, evenly spaced in rank, always the first and the last."""
    ordered = sorted(values)
    if len(ordered) <= k:
        return ordered
    picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, k)).astype(int))
    return [ordered[i] for i in picks]


def panel_figure(n_panels: int, *, ncols: int | None = None, panel_w: float = PANEL_W, panel_h: float = PANEL_H,
                 extra_w: float = 0.9, extra_h: float = 1.1) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure of ``n_panels`` panels, at most ``MAX_COLS`` wide (unused cells hidden).

    ``extra_w``/``extra_h`` leave room for a colour bar and for the title and the legend.
    """
    ncols = ncols or min(n_panels, MAX_COLS)
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel_w * ncols + extra_w, panel_h * nrows + extra_h), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, axes[:n_panels]


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` points (0.55 em per char)."""
    chars = max(12, int(width_in * 72.0 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def figure_title(fig: Figure, title: str, note: str = "") -> None:
    """Suptitle: the title and the measurement note, each wrapped to the figure's width."""
    width = fig.get_figwidth() - 0.3
    text = wrap(title, width, TITLE_PT) + (f"\n{wrap(note, width, TITLE_PT - 1.5)}" if note else "")
    fig.suptitle(text, fontsize=TITLE_PT)


def panel_title(ax: Axes, text: str) -> None:
    """An axes title wrapped to the panel's width."""
    width = ax.get_figure().get_figwidth() * ax.get_position().width
    ax.set_title(wrap(text, max(width, 1.5), PANEL_TITLE_PT), fontsize=PANEL_TITLE_PT)


def figure_legend(fig: Figure, handles: list[Line2D]) -> None:
    """One legend for the whole figure, below the panels, up to four entries per row."""
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)


# --------------------------------------------------------------------------- colours and styles
_VIRIDIS = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, 256)), name="viridis_0_0.9")


class BudgetColors:
    """Colour of a budget U on one log scale (viridis 0-0.9) shared by every panel of a figure."""

    def __init__(self, budgets: Iterable[float]):
        self.budgets = sorted({float(u) for u in budgets})
        lo, hi = self.budgets[0], self.budgets[-1]
        self.norm = LogNorm(lo, hi) if hi > lo else None

    def __call__(self, u: float) -> tuple[float, float, float, float]:
        return _VIRIDIS(self.norm(float(u)) if self.norm is not None else 0.0)

    def colorbar(self, fig: Figure, axes: Sequence[Axes]) -> None:
        """A colour bar labelled with some of the budgets (none with a single budget)."""
        if self.norm is None:
            return
        bar = fig.colorbar(ScalarMappable(norm=self.norm, cmap=_VIRIDIS), ax=list(axes), shrink=0.9, aspect=30,
                           pad=0.02)
        ticks = select_evenly(self.budgets, 6)
        bar.set_ticks(ticks, labels=[format_tokens(u) for u in ticks])
        bar.ax.minorticks_off()
        bar.set_label(BUDGET_LABEL)


@dataclass(frozen=True)
class FamilyStyle:
    label: str
    color: str
    marker: str
    linestyle: object


_FIXED = {"ar": FamilyStyle("AR", "#1f4e9c", "o", "-"), "diffusion": FamilyStyle("diffusion", "#d1641b", "^", "--")}
_OTHER_COLORS = ("#2e8b57", "#8e44ad", "#8c564b", "#c2185b", "#7f7f00", "#17becf")
_OTHER_MARKERS = ("s", "D", "v", "P", "X", "h")
_OTHER_LINES = ("-.", ":", (0, (5, 1.5)), (0, (3, 1, 1, 1, 1, 1)))


def family_label(family: str) -> str:
    """'ar' -> 'AR', 'block_diffusion-b4' -> 'block diffusion b=4'."""
    if family in _FIXED:
        return _FIXED[family].label
    name, sep, block = family.rpartition("-b")
    text = (name if sep and block.isdigit() else family).replace("_", " ")
    return f"{text} b={block}" if sep and block.isdigit() else text


def family_style(family: str, all_families: Sequence[str]) -> FamilyStyle:
    """Fixed style for AR and diffusion; the others by their rank among ``all_families``."""
    if family in _FIXED:
        return _FIXED[family]
    i = [f for f in sorted(all_families) if f not in _FIXED].index(family)
    return FamilyStyle(family_label(family), _OTHER_COLORS[i % len(_OTHER_COLORS)],
                       _OTHER_MARKERS[i % len(_OTHER_MARKERS)], _OTHER_LINES[i % len(_OTHER_LINES)])


def family_handle(style: FamilyStyle, label: str | None = None, *, color: str | None = None,
                  marker: bool = True) -> Line2D:
    return Line2D([], [], color=color or style.color, linestyle=style.linestyle,
                  marker=style.marker if marker else None, markersize=4, label=label or style.label)
