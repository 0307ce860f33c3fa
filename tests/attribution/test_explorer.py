"""The explorer of notebook 59: its views are the kit's attribution of the selected fact; controls only with a
live front end, and they draw nothing while being built."""
import pandas as pd

from moescope import data, models
from moescope.attribution import attribute, explorer


def test_views_are_the_attribution_of_the_selected_fact():
    lm = models.load_model("olmoe-like")
    fact, views = explorer.views(lm, "country_capital", 3)
    expected = data.facts_frame([data.load_relation("country_capital")]).iloc[3]
    assert (fact.prompt, fact.object) == (expected.prompt, expected.object)
    direct = attribute(lm.model, lm.tokenizer, [fact.prompt], [fact.object], neurons=True, top_neurons=10,
                       progress=False).tables()
    for name in ("samples", "layers", "heads", "experts", "neurons"):
        pd.testing.assert_frame_equal(views[name], direct[name])
    fig = explorer.draw(fact, views)
    assert len(fig.axes) == 5 and f"rank {views['samples']['rank'][0]}" in fig.axes[0].get_title()  # 3 panels + 2 bars
    assert [ax.get_ylabel() for ax in fig.axes[3:]] == ["LPI (nats)", "LPI (nats)"]  # both colour bars have a unit
    ticks = [t.get_text() for t in fig.axes[2].get_yticklabels()]
    assert ticks == [str(i) for i in range(len(views["layers"]))]  # one integer tick per layer, no fractions
    routed = sorted(set(views["experts"].expert))
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == [str(e) for e in routed]


def test_readable_views_name_tokens_and_the_shared_expert_as_the_figure_does():
    lm = models.load_model("g2-qwen-moe-l8")
    _, views = explorer.views(lm, "country_capital", 0)
    assert views["samples"].target[0].startswith("\u0120")  # the tokenizer's space marker, in the raw table
    shown = explorer.readable(views, lm.tokenizer)
    assert shown["samples"].target[0] == "Washington"
    assert "sample_id" not in shown["neurons"] and "S" in set(shown["neurons"].expert) | set(shown["experts"].expert)
    assert set(shown["experts"].expert) - {"S"} == {str(e) for e in views["experts"].expert if e >= 0}


def test_controls_only_with_a_frontend_and_no_drawing_while_built(monkeypatch):
    monkeypatch.setattr(explorer, "has_frontend", lambda: False)
    assert explorer.controls("olmoe-like", ["country_capital"], "country_capital") is None
    monkeypatch.setattr(explorer, "has_frontend", lambda: True)
    drawn = []
    monkeypatch.setattr(explorer, "show", lambda lm, relation, index: drawn.append((lm.name, relation, index)))
    ui = explorer.controls("olmoe-like", ["country_capital", "fruit_inside_color"], "country_capital")
    (_, relation_w), index_w, out = ui.children[0].children, ui.children[1], ui.children[2]
    # the default selection is in the output area from the start (figure + neuron table), nothing was displayed
    assert drawn == [] and [list(o["data"]) for o in out.outputs] == [["image/png", "text/plain"],
                                                                     ["text/plain", "text/html"]]
    facts = data.facts_frame([data.load_relation("country_capital")])
    assert index_w.options[3] == (f"{facts.prompt[3]} -> {facts.object[3]}", 3)  # the prompt, not a number
    index_w.value = 3
    assert drawn == [("olmoe-like", "country_capital", 3)]
    relation_w.value = "fruit_inside_color"
    assert drawn[-1] == ("olmoe-like", "fruit_inside_color", 0) and len(drawn) == 2
    assert len(index_w.options) == len(data.load_relation("fruit_inside_color"))


def test_the_explorer_figure_carries_its_caption_for_the_report():
    from moescope import plots

    lm = models.load_model("olmoe-like")
    fact, views = explorer.views(lm, "country_capital", 0)
    assert plots.caption(explorer.draw(fact, views)) == \
        f"Explorer: layer, head and expert LPI gains of {fact.prompt!r} -> {fact.object}."
