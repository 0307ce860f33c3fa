"""The attribution paper's figures, drawn from small synthetic results: seeds as a mean with a band, legends off
the data, integer layer ticks, the paper's value drawn where it has one, and the Table 2 chart in the quantity its
verdict table decides on."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from moescope import plots
from moescope.attribution import claims, figures, paper
from moescope.attribution.ablation import NEITHER, Ablation
from moescope.attribution.blocking import Blocking
from moescope.attribution.coordination import Coordination
from moescope.attribution.depth import DepthProfile
from moescope.attribution.efficiency import Efficiency
from moescope.attribution.neurons import NeuronRoles

CONFIGS = [("top-1 routed only", False, 1, False), ("shared only", True, 0, False), (NEITHER, False, 0, False),
           ("shared + top-2", True, 2, False), ("shared + top-4", True, 4, True)]


def _ablation(mrrs):
    table = pd.DataFrame([(c, s, k, d, 0.0, m, 10) for (c, s, k, d), m in zip(CONFIGS, mrrs)],
                         columns=["config", "shared", "top_k", "default", "hit@10", "mrr", "n"])
    return Ablation(pd.DataFrame(), table, {"model": "m"})


def _legend_is_outside(ax, fig):
    fig.canvas.draw()
    legend = ax.get_legend() or fig.legends[0]
    return legend.get_window_extent().x0 >= ax.get_window_extent().x1 or \
        legend.get_window_extent().y1 <= ax.get_window_extent().y0


def _integer_ticks(axis):
    return all(float(t).is_integer() for t in axis.get_ticklocs())


def test_table2_chart_shows_the_recovered_share_of_every_seed_and_explains_every_colour():
    runs = [_ablation([0.4, 0.1, 0.0, 0.6, 0.8]), _ablation([0.3, 0.3, 0.1, 0.7, 0.9])]
    share = figures.recovered_share(runs[0])
    assert share["top-1 routed only"] == pytest.approx(0.5) and share[NEITHER] == 0 and share["shared + top-4"] == 1
    fig = figures.ablation(runs)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    kit, ref = bars[:len(CONFIGS)], bars[len(CONFIGS):]
    assert [b.get_height() for b in kit] == pytest.approx([(0.5 + 0.25) / 2, (0.125 + 0.25) / 2, 0, 0.75, 1])
    assert ref[-1].get_height() == pytest.approx(claims.table2_paper_recovered("shared + top-4 (default)"))
    assert np.isnan(ref[2].get_height())  # the paper has no 'neither' row
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["kit, with the shared expert", "kit, without it (routed only, neither)",
                      "paper (Table 2; no 'neither' row)"]
    assert "recovered" in ax.get_ylabel() and "2 seeds" in ax.get_title() and _legend_is_outside(ax, fig)
    assert plots.caption(fig).startswith("Table 2: the share of MRR")  # the report's caption, not the file stem


def test_depth_profile_draws_seeds_as_a_band_and_the_papers_peak_span():
    rows = [(f"{d}-s{s}", (l + 1) / 4, 0.1 * l + 0.01 * s) for d in ("g2-moe-l8", "g2-dense-l8", "g2-qwen-moe-l8")
            for s in range(3) for l in range(4)]
    dp = DepthProfile(pd.DataFrame(), pd.DataFrame(rows, columns=["model", "depth", "ffn_gain"]), pd.DataFrame(), {})
    fig = figures.depth_profile(dp)
    ax = fig.axes[0]
    assert len(ax.lines) == 3 + len(paper.STAGE_BOUNDS) and len(ax.collections) == 3  # one mean and band per design
    assert len({(l.get_color(), l.get_linestyle()) for l in ax.lines[:3]}) == 3
    assert any("peak gain position" in t.get_text() for t in ax.get_legend().get_texts())
    assert _legend_is_outside(ax, fig)


def test_blocking_marks_the_papers_table5_and_keeps_its_legend_off_the_data():
    ranks = pd.DataFrame([("country_capital", sel, "reroute", k, k, k / 64, 1.0 / (1 + k) if sel == "attributed" else 0.9)
                          for sel in ("attributed", "frequency", "random") for k in (1, 5, 10)],
                         columns=["task", "selection", "method", "k", "n_blocked", "fraction", "rr"])
    b = Blocking(ranks, pd.DataFrame(), {}, {"model": "m", "shared_expert": False, "task_mrr": {"country_capital": 1.0}})
    fig = figures.blocking([b])
    ax = fig.axes[0]
    crosses = [l for l in ax.lines if l.get_marker() == "x" and len(l.get_xdata())]
    ref = paper.TABLE5.set_index(["model", "task"]).loc[("OLMoE", "country_capital")]
    assert list(crosses[0].get_ydata()) == [ref.orig, ref.block1, ref.block5, ref.block10]
    assert list(ax.lines[0].get_xdata()) == [0, 1, 5, 10]  # the unblocked MRR at k = 0
    assert ax.lines[1].get_linestyle() == ":" and list(ax.lines[1].get_xdata()) == [0, 1, 5, 10]  # most-routed
    assert _integer_ticks(ax.xaxis) and _legend_is_outside(ax, fig) and plots.caption(fig).startswith("Table 5")


def test_layer_axes_have_integer_ticks_and_legends_sit_off_the_data():
    nr = NeuronRoles(pd.DataFrame({"layer": [0, 1, 0, 1], "kind": ["shared", "shared", "routed", "routed"],
                                   "count": [1, 2, 3, 4]}), pd.DataFrame(), pd.DataFrame(),
                     pd.DataFrame({"family": ["geo (x)"] * 3, "stage": ["early", "middle", "late"],
                                   "shared_share": [0.1, 0.5, 0.9]}), {})
    fig = figures.neuron_roles(nr, 10)
    assert _integer_ticks(fig.axes[0].xaxis) and _legend_is_outside(fig.axes[0], fig)
    assert fig.axes[-1].get_ylabel() == "shared share (0-1)"
    prompts = pd.DataFrame({c: [0.5, 0.6] for c in ("rr_clean", "rr_inhibited", "rr_mediated", "rr_forced",
                                                       "gate_clean", "gate_inhibited")})
    co = Coordination(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), prompts, pd.DataFrame({"rr": [0.4], "gate_inhibited": [0.3]}),
                      pd.DataFrame(), {})
    within = pd.DataFrame({"layer": [0, 1, 2], "r": [0.1, 0.2, 0.3], "low": [0.0] * 3, "high": [0.5] * 3})
    fig = figures.coordination(co, within)
    assert _integer_ticks(fig.axes[0].xaxis) and _legend_is_outside(fig.axes[0], fig)


def test_efficiency_draws_each_design_as_the_mean_of_its_seeds_beside_table1():
    table = pd.DataFrame({"model": ["moe-s0", "moe-s1", "dense-s0", "dense-s1", "solo"],
                          "moe": [True, True, False, False, True], "per_layer_efficiency": [0.2, 0.4, 0.1, 0.3, 0.5]})
    fig = figures.efficiency(Efficiency(pd.DataFrame(), table, {}))
    kit, ref = fig.axes
    assert [p.get_height() for p in kit.patches] == pytest.approx([0.3, 0.2, 0.5])  # one bar per design: the mean
    dots = [c for c in kit.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in dots) == 5 and len(kit.collections) - len(dots) == 2  # seeds; ranges
    assert [t.get_text() for t in kit.get_xticklabels()] == ["moe\n(2 seeds)", "dense\n(2 seeds)", "solo\n(1 seed)"]
    assert [p.get_height() for p in ref.patches] == pytest.approx(list(paper.TABLE1.per_layer_efficiency))
    assert "nats" in kit.get_ylabel() and _legend_is_outside(kit, fig) and plots.caption(fig).startswith("Per-layer")
