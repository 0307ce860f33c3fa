"""The attribution paper's numbers (moescope.attribution.paper): internal consistency and the readings they imply."""
import pytest

from moescope.attribution import paper


def test_table1_efficiency_is_ffn_gain_over_layers():
    t = paper.TABLE1
    assert ((t.ffn_gain / t.layers - t.per_layer_efficiency).abs() < 6e-4).all()
    assert list(t.layers) == [paper.MODELS[m][2] for m in t.model]


def test_efficiency_readings_reproduce_the_papers_percentages():
    r = paper.paper_efficiency_readings()
    assert round(r["mean MoE / best dense"], 2) == 0.31  # ACL abstract
    assert round(r["mean MoE / paired dense"], 2) == 0.36  # ~ arXiv v1's 37%
    assert round(r["paired MoE / paired dense"], 2) == 0.51
    assert round(r["mean MoE / mean dense"], 2) == 0.44


def test_table5_drops_and_the_76_readings():
    t = paper.TABLE5.set_index(["task", "model"])
    assert t.loc[("country_capital", "Qwen1.5-MoE"), "drop@10"] == pytest.approx(0.437, abs=1e-3)
    assert t["drop@10"].max() < 0.76  # the abstract's "76% drop" matches no row: hence two readings
    assert t.loc[("country_capital", "OLMoE"), "block10"] == 0.76
    assert set(paper.TABLE5_MODEL.values()) == set(paper.TABLE5.model)


def test_blocked_fraction_of_the_papers_top10():
    assert paper.blocked_fraction("Qwen1.5-MoE") == pytest.approx(10 / 1440)
    assert paper.blocked_fraction("OLMoE", 5) == pytest.approx(5 / 1024)


def test_stage_of_uses_paper_boundaries():
    assert [paper.stage_of((l + 1) / 24) for l in (12, 13, 18, 19)] == ["early", "middle", "middle", "late"]
    assert sum(paper.STAGE_SHARES.values()) == pytest.approx(1.0)


def test_paper_name_knows_hub_ids_not_organisms():
    assert paper.paper_name("allenai/OLMoE-1B-7B-0924") == "OLMoE"
    assert paper.paper_name("/models/hub/Qwen/Qwen1.5-MoE-A2.7B") == "Qwen1.5-MoE"
    assert paper.paper_name("qwen-moe-like") is None and paper.paper_name(None) is None
