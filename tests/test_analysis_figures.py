"""Report figures that scale: bounded size, short legends, no overlapping text; the quick report unchanged."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

import analysis.report as report_module
from analysis.fits import analyse
from analysis.law import LawParams
from analysis.plotkit import format_tokens
from analysis.plots import plot_block_size
from analysis.report import write_report
from analysis.results import aggregate_points, validate_results
from analysis.synthetic import law_table

MAX_PX = 3000
MAX_LEGEND = 12
TRUTHS = {
    "ar": LawParams(E=1.87, A=520.8, alpha=0.353, B=1487.7, beta=0.353, R_D_star=31.2, R_N_star=55.2),
    "diffusion": LawParams(E=2.05, A=560.0, alpha=0.34, B=2400.0, beta=0.36, R_D_star=494.0, R_N_star=1266.0),
}
PRABHUDESAI_EPOCHS = [1, 1.5, 2, 3, 4, 5, 7, 10, 14, 20, 30, 40, 60, 80, 120, 160, 240, 320, 500, 800]


# --------------------------------------------------------------------------- checks
def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG header."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def drawn_texts(fig: Figure) -> list[tuple[str, object]]:
    """(text, window extent) of every non-empty text the figure draws, tick labels of drawn ticks only."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts: list[Text] = []
    all_tick_labels = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                all_tick_labels |= {id(tick.label1), id(tick.label2)}
            texts += [label for tick in axis._update_ticks() for label in (tick.label1, tick.label2)
                      if label.get_visible() and label.get_text().strip()]
    texts += [t for t in fig.findobj(Text)
              if id(t) not in all_tick_labels and t.get_visible() and t.get_text().strip()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts]


def overlaps(fig: Figure) -> list[str]:
    """Pairs of drawn texts whose boxes intersect by more than a pixel, and figure legends over a panel."""
    boxes = drawn_texts(fig)
    found = []
    for i, (text_a, a) in enumerate(boxes):
        for text_b, b in boxes[i + 1:]:
            if a.x0 < b.x1 - 1 and b.x0 < a.x1 - 1 and a.y0 < b.y1 - 1 and b.y0 < a.y1 - 1:
                found.append(f"{text_a!r} / {text_b!r}")
    renderer = fig.canvas.get_renderer()
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        found += [f"legend over panel {ax.get_title()!r}" for ax in fig.axes
                  if box.overlaps(ax.get_window_extent(renderer))]
    return found


def legend_entries(fig: Figure) -> list[int]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [len(legend.get_texts()) for legend in legends]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """The figure objects write_report saves, by file stem (so their layout can be inspected)."""
    figures: dict[str, Figure] = {}
    save = report_module._save_figure

    def spy(fig: Figure, out_dir: Path, stem: str, formats=report_module.FORMATS) -> list[str]:
        figures[stem] = fig
        return save(fig, out_dir, stem, formats)

    monkeypatch.setattr(report_module, "_save_figure", spy)
    return figures


def assert_figures_scale(out: Path, figures: dict[str, Figure], expected: set[str]) -> dict[str, tuple[int, int]]:
    assert set(figures) == expected
    sizes = {}
    for stem, fig in figures.items():
        sizes[stem] = png_size(out / f"{stem}.png")
        assert max(sizes[stem]) < MAX_PX, (stem, sizes[stem])
        assert all(n <= MAX_LEGEND for n in legend_entries(fig)), (stem, legend_entries(fig))
        assert overlaps(fig) == [], (stem, overlaps(fig))
    return sizes


# --------------------------------------------------------------------------- scale
def test_report_at_prabhudesai_size(tmp_path: Path, captured: dict[str, Figure]) -> None:
    """3 budgets x 5 models x 20 epoch counts (one run each) x 2 objectives."""
    table = law_table(TRUTHS, params=[7e6, 44e6, 140e6, 425e6, 1.2e9], budgets=[25e6, 50e6, 100e6],
                      epochs=PRABHUDESAI_EPOCHS, noise=0.003, separate_runs=True, se={"diffusion": 0.004})
    assert len(table) == 600 and table["run_id"].nunique() == 600
    table.to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path / "results.csv", tmp_path / "report", n_bootstrap=0, formats=("png",))
    assert_figures_scale(tmp_path / "report", captured,
                         {"loss_vs_compute", "loss_vs_epochs", "law_fit", "data_value", "c_crit"})
    fits = json.loads((tmp_path / "report" / "fits.json").read_text())
    assert [c["flops"] is not None for c in fits["crossover"]] == [True, True, True]
    assert all(law["n_runs"] == 300 for law in fits["laws"].values())


def test_report_with_many_budgets_and_model_sizes(tmp_path: Path, captured: dict[str, Figure]) -> None:
    """31 budgets x 15 model sizes (fractional epochs), one objective: the shape of a published table."""
    budgets = np.geomspace(5e6, 2e9, 31).round(-3)
    params = np.geomspace(3e6, 2e9, 15).round(-3)
    table = law_table({"ar": TRUTHS["ar"]}, params=params, budgets=budgets, epochs=[0.6, 2.5, 9.3, 35.5],
                      noise=0.003)
    table[[c for c in table.columns if c not in ("run_epochs", "val_loss_se")]].to_csv(tmp_path / "results.csv",
                                                                                      index=False)
    summary = write_report(tmp_path / "results.csv", tmp_path / "report", n_bootstrap=0, formats=("png",))
    assert_figures_scale(tmp_path / "report", captured, {"loss_vs_compute", "loss_vs_epochs", "law_fit", "data_value"})
    assert "9 of 15 model sizes" in captured["loss_vs_epochs"]._suptitle.get_text()
    assert "No crossover to compute" in summary
    assert f"| {format_tokens(budgets[0])} | ar | " in summary and " | 35.5 | m2B | " in summary  # fractional epochs
    law = json.loads((tmp_path / "report" / "fits.json").read_text())["laws"]["ar"]
    assert law["n_runs"] == 31 * 15 and law["status"] in ("ok", "at_bound")


def test_the_overlap_check_sees_overlaps() -> None:
    """The checks above would catch the old failures: colliding titles, a legend over a panel."""
    fig = Figure(figsize=(4, 3))
    left, right = fig.subplots(1, 2)
    left.set_title("a title far too long for its narrow panel, running into the next one")
    right.set_title("neighbour")
    assert overlaps(fig)
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([1, 2], [1, 2], label="x")
    fig.legend(loc="center")
    assert any("legend over panel" in item for item in overlaps(fig))
    assert legend_entries(fig) == [1]


def test_block_size_families_and_figure() -> None:
    truths = {"ar": TRUTHS["ar"], "diffusion": TRUTHS["diffusion"],
              "bd4": LawParams(**{**TRUTHS["diffusion"].to_dict(), "E": 1.95}),
              "bd16": LawParams(**{**TRUTHS["diffusion"].to_dict(), "E": 2.0})}
    table = law_table(truths, params=[7e6, 44e6], budgets=[25e6, 100e6], epochs=[1, 4, 16, 64])
    table["block_size"] = table["objective"].map({"bd4": 4, "bd16": 16})
    table["objective"] = table["objective"].replace({"bd4": "block_diffusion", "bd16": "block_diffusion"})
    table["seq_len"] = 128
    points = aggregate_points(validate_results(table))
    analysis = analyse(points, "dense", n_bootstrap=0)
    assert analysis.families == ["ar", "block_diffusion-b16", "block_diffusion-b4", "diffusion"]
    assert {c.family for c in analysis.crossovers} == {"block_diffusion-b16", "block_diffusion-b4", "diffusion"}
    fig = plot_block_size(points)
    lines = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "-"]
    assert len(lines) == 2  # one per budget
    for line in lines:
        assert list(line.get_xdata()) == [1.0, 4.0, 16.0, 128.0]  # AR at 1, block sizes, diffusion at seq_len
    best = points.groupby(["unique_tokens", "family"])["val_loss"].min()
    ys = sorted(tuple(line.get_ydata()) for line in lines)
    expected = sorted(tuple(best[u][f] for f in ("ar", "block_diffusion-b4", "block_diffusion-b16", "diffusion"))
                      for u in (25e6, 100e6))
    assert np.allclose(ys, expected)
    assert legend_entries(fig) == [3] and overlaps(fig) == []
    assert plot_block_size(points.assign(block_size=np.nan)) is None


# --------------------------------------------------------------------------- the quick preset's report
QUICK_LOSSES = """\
ar-U25000-E16 1:6.533 2:6.291 3:6.228 4:6.102 6:6.435 8:6.597 12:7.282 16:7.681
diffusion-U25000-E96 1:6.591 2:6.534 3:6.657 4:6.439 6:6.337 8:6.497 12:6.587 16:6.811 24:6.706 32:6.706 48:6.710 64:6.697 96:6.885
ar-U50000-E16 1:6.237 2:5.910 3:5.760 4:5.703 6:5.849 8:6.038 12:6.510 16:7.009
diffusion-U50000-E96 1:6.370 2:6.421 3:6.255 4:6.259 6:6.200 8:6.265 12:6.285 16:6.306 24:6.217 32:6.119 48:6.113 64:6.080 96:6.060
ar-U100000-E16 1:5.677 2:5.219 3:5.155 4:5.156 6:5.136 8:5.265 12:5.498 16:5.863
diffusion-U100000-E96 1:6.214 2:6.110 3:6.084 4:6.079 6:6.020 8:5.994 12:5.839 16:5.708 24:5.548 32:5.439 48:5.405 64:5.442 96:5.352"""  # noqa: E501
QUICK_SE = {25000: 0.0189, 50000: 0.0394, 100000: 0.0439}


def quick_table() -> pd.DataFrame:
    """The quick preset's table (losses of benchmarks/RESULTS.md): integer epochs, one model, ar and diffusion."""
    rows = []
    n = 106_816
    for line in QUICK_LOSSES.splitlines():
        name, *evals = line.split()
        objective, u, run = name.split("-")
        u, run = int(u[1:]), int(run[1:])
        for item in evals:
            e, loss = item.split(":")
            rows.append({"run_id": f"{name}-tiny-dense-s0", "objective": objective, "attention": "dense",
                         "model": "tiny", "params": 172_352, "non_embedding_params": n, "unique_tokens": u,
                         "epochs": int(e), "tokens_seen": u * int(e), "flops": 6.0 * n * u * int(e),
                         "val_loss": float(loss), "seed": 0, "run_epochs": run,
                         "val_loss_se": QUICK_SE[u] if objective == "diffusion" else 0.0,
                         "val_bpb": float(loss) / math.log(2) / 3.5, "seq_len": 128, "vocab_size": 1024,
                         "mc_samples": 4 if objective == "diffusion" else None, "corpus": "synthetic-code"})
    return pd.DataFrame(rows)


def test_quick_report_renders_with_unchanged_numbers(tmp_path: Path, captured: dict[str, Figure]) -> None:
    quick_table().to_csv(tmp_path / "results.csv", index=False)
    summary = write_report(tmp_path / "results.csv", tmp_path / "report", n_bootstrap=10, formats=("png",))
    for line in [  # the rows the report printed before this change (same table, same numbers)
        "| 25k | ar | 6.1020 | 0.0000 | 4 | tiny | 6.41e10 |  |",
        "| 25k | diffusion | 6.3370 | 0.0189 | 6 | tiny | 9.61e10 | none up to 1.54e12 |",
        "| 50k | ar | 5.7030 | 0.0000 | 4 | tiny | 1.28e11 |  |",
        "| 50k | diffusion | 6.0600 | 0.0394 | 96 | tiny | 3.08e12 | none up to 3.08e12 |",
        "| 100k | ar | 5.1360 | 0.0000 | 6 | tiny | 3.85e11 |  |",
        "| 100k | diffusion | 5.3520 | 0.0439 | 96 | tiny | 6.15e12 | none up to 6.15e12 |",
        "| diffusion | 25k | 6.1020 ± 0.0000 | none up to 1.54e12 | — | — | no | — |  |",
        "| diffusion | 100k | 5.1360 ± 0.0000 | none up to 6.15e12 | — | — | no | — |  |",
    ]:
        assert line in summary, line
    # the law fits reach the same optimum as before (R_D* 1.179 and 4.343, with E -> 0) and now say it is degenerate
    laws = json.loads((tmp_path / "report" / "fits.json").read_text())["laws"]
    for family, r_d_star in (("ar", 1.179), ("diffusion", 4.343)):
        assert laws[family]["R_D_star"] == pytest.approx(r_d_star, rel=2e-3)
        assert laws[family]["status"] == "degenerate" and laws[family]["at_bound"]["E"] == "lower"
        assert laws[family]["R_D_star_err"] is None and "no bootstrap errors: 3 runs" in laws[family]["note"]
    assert_figures_scale(tmp_path / "report", captured, {"loss_vs_compute", "loss_vs_epochs", "law_fit"})
