"""The DES-MoE figures, drawn from small synthetic results: seeds as a mean with a band, legends off the data,
integer stage ticks, labelled axes, and the paper's value drawn beside the kit's where the paper gives one."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.patches import Rectangle

from moescope.finetuning import figures, paper


def _legend_is_outside(legend, ax, fig):
    fig.canvas.draw()
    box, area = legend.get_window_extent(), ax.get_window_extent()
    return box.x0 >= area.x1 or box.y1 <= area.y0


def _bars(ax):
    return [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]


def test_forgetting_curve_draws_a_band_per_method_and_the_papers_drops():
    curve = pd.DataFrame([(m, n, g, g - 0.02, g + 0.02) for m, base in (("fft", 0.9), ("desmoe", 0.8))
                          for n, g in zip((2, 4, 6), (base, base - 0.05, base - 0.1))]
                         + [("desmoe_no_alr", 6, 0.7, 0.6, 0.8)],
                         columns=["method", "n_domains", "general", "general_low", "general_high"])
    drops = pd.DataFrame([("fft", 0.1, 0.05, 0.15, paper.FIG2_DROP["fft"]),
                          ("desmoe", 0.2, 0.1, 0.3, paper.FIG2_DROP["desmoe"])],
                         columns=["method", "drop", "low", "high", "paper"])
    fig = figures.forgetting_curve(curve, 0.95, drops)
    ax, bars = fig.axes
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # one band per multi-N method
    assert _bars(bars) == pytest.approx([10, 20, paper.FIG2_DROP["fft"], paper.FIG2_DROP["desmoe"]])
    assert [t.get_text() for t in bars.get_xticklabels()] == ["full FT", "DES-MoE"]
    assert list(ax.get_xticks()) == [2, 4, 6] and "points" in bars.get_ylabel()
    assert _legend_is_outside(ax.get_legend(), ax, fig)


def test_convergence_draws_the_seed_mean_and_the_time_to_target_relative_to_full_ft_beside_fig3():
    history = pd.DataFrame([(m, s, step, v * step / 100 + 0.01 * s) for m, v in (("fft", 0.3), ("desmoe", 0.2))
                            for s in range(3) for step in (0, 50, 100)], columns=["method", "seed", "step", "val"])
    conv = pd.DataFrame([("fft", s, 10.0, True) for s in range(3)] + [("desmoe", s, 5.0 * (s + 1), s < 2) for s in range(3)],
                        columns=["method", "seed", "seconds", "reached"])
    fig = figures.convergence(history, 0.25, conv)
    ax, bars = fig.axes
    fft_line = next(l for l in ax.get_lines() if l.get_label() == "full FT")
    assert fft_line.get_ydata() == pytest.approx([0.01, 0.16, 0.31])  # the mean over the three seeds
    minutes = paper.FIG3_MINUTES
    assert _bars(bars) == pytest.approx([1.0, 1.0, 1.0, minutes["desmoe"] / minutes["fft"]])
    assert [t.get_text() for t in bars.texts] == [">="]  # one DES-MoE seed never reached the target
    assert _legend_is_outside(ax.get_legend(), ax, fig)


def test_sequential_draws_every_seed_as_mean_and_band_with_integer_stages():
    rows = []
    for s in range(3):
        rows += [("desmoe", s, 1, "math", "math", 0.9), ("desmoe", s, 1, "math", "general", 0.8 - 0.1 * s),
                 ("desmoe", s, 2, "code", "math", 0.5), ("desmoe", s, 2, "code", "code", 0.7),
                 ("desmoe", s, 2, "code", "general", 0.7)]
    frame = pd.DataFrame(rows, columns=["method", "seed", "stage", "trained", "domain", "acc"])
    fig = figures.sequential(frame)
    ax = fig.axes[0]
    general = next(l for l in ax.get_lines() if l.get_color() == "black")
    assert general.get_ydata() == pytest.approx([0.7, 0.7])
    assert all(float(t).is_integer() for t in ax.get_xticks()) and "3 seeds" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["general", "math (stage 1)", "code (stage 2)"] and _legend_is_outside(ax.get_legend(), ax, fig)


def test_affinity_shares_one_colour_scale_and_labels_the_moe_layers():
    rng = np.random.default_rng(0)
    maps = {"domains": ["code", "law"], "t1": rng.random((2, 2, 4)), "T": 2 * rng.random((2, 2, 4))}
    fig = figures.affinity(maps)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and {im.get_clim() for im in images} == {(0, float(maps["T"].max()))}
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["MoE layer 1", "MoE layer 2"]
    assert "affinity" in fig.axes[-1].get_ylabel()  # the colour bar


def test_premise_and_pareto_draw_the_papers_values():
    table = pd.DataFrame({"domain": ["math", "law"], "token_share": [0.1, 0.2], "gate_share": [0.2, 0.3]})
    fig = figures.premise(table, 16)
    ax = fig.axes[0]
    marks = next(l for l in ax.get_lines() if l.get_marker() == "x")
    assert np.isnan(marks.get_ydata()[0]) and marks.get_ydata()[1] == pytest.approx(paper.ESFT_EXPERTS_PER_LAYER["law"] / 64)
    assert _legend_is_outside(ax.get_legend(), ax, fig)
    points = pd.DataFrame({"method": ["fft", "desmoe"], "test": [0.1, 0.2], "general": [0.8, 0.7]})
    fig = figures.pareto(points, points, 0.9)
    ref = fig.axes[1]
    drawn = {tuple(np.round(o, 3)) for c in ref.collections for o in c.get_offsets()}
    assert (paper.TABLE1_DOWNSTREAM["desmoe"], paper.TABLE2_GENERAL["desmoe"]) in drawn
    assert _legend_is_outside(fig.legends[0], fig.axes[0], fig)
