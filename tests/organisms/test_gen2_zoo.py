"""The gen-2 registry: matched pairs (checked on freshly built models, no weights needed), the shared-expert design,
and the clear error for an organism that is registered but not trained."""
import json

import pytest
import torch

from moescope import arch, paths
from moescope.organisms import gen2, planted, zoo


@pytest.fixture(scope="module")
def data():
    return gen2.gen2_data()


def _built(name: str, tokenizer) -> torch.nn.Module:
    return gen2._build(zoo.GEN2_ZOO[name], tokenizer)


def test_registry_shape():
    assert {(p.depth, p.seed) for p in zoo.PAIRS} == {(d, s) for d in (8, 16) for s in (0, 1, 2)}
    names = [n for p in zoo.PAIRS for n in (p.moe, p.dense)]
    assert len(set(names)) == 12 and set(names) < set(zoo.GEN2)
    assert zoo.SHARED_MOE in zoo.GEN2 and planted.GEN2_NAME in zoo.GEN2


@pytest.mark.parametrize("pair", zoo.PAIRS, ids=lambda p: f"l{p.depth}-s{p.seed}")
def test_pair_specs_share_everything_but_the_ffn(pair):
    moe, dense = zoo.GEN2_ZOO[pair.moe], zoo.GEN2_ZOO[pair.dense]
    assert (moe.partner, dense.partner, moe.role, dense.role) == (pair.dense, pair.moe, "moe", "dense")
    for key in ("seed", "max_steps", "batch", "lr", "warmup", "final_lr", "corpus", "vocab_size", "rope_theta",
                "rms_norm_eps", "curriculum"):
        assert getattr(moe, key) == getattr(dense, key), key
    for key in ("hidden", "heads", "layers"):
        assert getattr(moe.shape, key) == getattr(dense.shape, key) and moe.shape.layers == pair.depth


def test_built_pair_is_matched_in_active_parameters(data):
    _, tokenizer = data
    pair = zoo.PAIRS[0]
    moe, dense = _built(pair.moe, tokenizer), _built(pair.dense, tokenizer)
    a, b = arch.describe(moe), arch.describe(dense)
    assert all(a[k] == b[k] for k in ("layers", "hidden", "heads", "vocab"))
    assert a["moe_layers"] == pair.depth and b["moe_layers"] == 0
    am, ad = gen2.active_params(moe), gen2.active_params(dense)
    assert am["ffn_active_width"] == ad["ffn_active_width"]
    assert am["active_params"] - ad["active_params"] == am["router_params"]  # equal but for the router


def test_pair_members_differ_only_in_the_ffn(data):
    """With the dense member's attention, norms and embeddings copied in, the MoE member's attention computes the
    same outputs bit for bit: the pair's attention is the same module up to its weights."""
    _, tokenizer = data
    pair = zoo.PAIRS[0]
    moe, dense = _built(pair.moe, tokenizer).eval(), _built(pair.dense, tokenizer).eval()
    shared = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    assert {k: v.shape for k, v in moe.state_dict().items() if ".mlp." not in k} == {k: v.shape for k, v in shared.items()}
    moe.load_state_dict(shared, strict=False)
    x, pos = torch.randn(2, 5, moe.config.hidden_size), torch.arange(5)[None].expand(2, -1)
    pe_a, pe_b = moe.model.rotary_emb(x, pos), dense.model.rotary_emb(x, pos)
    assert all(torch.equal(u, v) for u, v in zip(pe_a, pe_b))
    with torch.no_grad():
        for la, lb in zip(moe.model.layers, dense.model.layers):
            out_a = la.self_attn(la.input_layernorm(x), position_embeddings=pe_a, attention_mask=None)[0]
            out_b = lb.self_attn(lb.input_layernorm(x), position_embeddings=pe_b, attention_mask=None)[0]
            assert torch.equal(out_a, out_b)


def test_shared_moe_design(data):
    _, tokenizer = data
    spec = zoo.GEN2_ZOO[zoo.SHARED_MOE]
    assert 32 <= spec.shape.experts <= 64 and spec.shape.top_k == 4 and spec.shape.layers >= 8
    assert 0 < spec.curriculum < spec.max_steps
    parts = arch.layers(_built(zoo.SHARED_MOE, tokenizer))
    assert all(p.ffn is not None and p.ffn_gate is not None for p in parts)  # a gated, always-on shared expert
    assert parts[0].ffn.down_proj.weight.shape[1] < spec.shape.top_k * spec.shape.expert_width  # small


def test_untrained_organism_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ORGANISMS", tmp_path)
    name = zoo.PAIRS[0].moe
    for call in (zoo.load_card, zoo.require_trained):
        with pytest.raises(zoo.NotTrainedError, match=f"python -m moescope organisms --gen 2 --names {name}"):
            call(name)
    with pytest.raises(zoo.NotTrainedError, match="--gen 1 --names olmoe-like"):
        zoo.require_trained("olmoe-like")
    assert zoo.require_trained("org/some-model") == "org/some-model"  # not registered: models.load_model decides
    assert zoo.partner(name) is None and zoo.seeds_of(name) == [name]


def test_partner_and_seeds_read_the_cards(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ORGANISMS", tmp_path)
    trained = [p for p in zoo.PAIRS if p.depth == 8]
    for p in trained:
        for name in (p.moe, p.dense):
            spec = zoo.GEN2_ZOO[name]
            (tmp_path / name).mkdir()
            (tmp_path / name / "card.json").write_text(json.dumps(
                {"gen": 2, "spec": spec.group, "seed": spec.seed, "partner": spec.partner}))
    for p in trained:
        assert zoo.partner(p.moe) == p.dense and zoo.partner(p.dense) == p.moe
    assert zoo.seeds_of(trained[1].moe) == [p.moe for p in trained]
    for name in ("olmoe-like", zoo.SHARED_MOE, "org/some-model", "/tmp/no-such-folder"):
        assert zoo.partner(name) is None and zoo.seeds_of(name) == [name]
