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
    assert len(fig.axes) == 4 and f"rank {views['samples']['rank'][0]}" in fig.axes[0].get_title()  # 3 panels + colorbar


def test_controls_only_with_a_frontend_and_no_drawing_while_built(monkeypatch):
    monkeypatch.setattr(explorer, "has_frontend", lambda: False)
    assert explorer.controls("olmoe-like", ["country_capital"], "country_capital") is None
    monkeypatch.setattr(explorer, "has_frontend", lambda: True)
    drawn = []
    monkeypatch.setattr(explorer, "show", lambda lm, relation, index: drawn.append((lm.name, relation, index)))
    ui = explorer.controls("olmoe-like", ["country_capital", "fruit_inside_color"], "country_capital")
    (_, relation_w, index_w), _, out = ui.children[0].children, ui.children[1], ui.children[2]
    assert drawn == [] and out.outputs == ()
    assert index_w.max == len(data.load_relation("country_capital")) - 1
    relation_w.value = "fruit_inside_color"
    assert drawn == [("olmoe-like", "fruit_inside_color", 0)]
    assert index_w.max == len(data.load_relation("fruit_inside_color")) - 1
