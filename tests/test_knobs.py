"""The issue-14 knobs: each is neutral (same hash) at its default, changes what it names when set, and refuses
bad values by name. Pure model/optimizer checks: no data, no training."""
import math

import pytest
import torch

from mainrun.config import ConfigError, make_config
from mainrun.optim import build_optimizers, set_lr
from mainrun.train import build_model

KNOBS = {"mlp": "relu2", "emb_dropout": 0.2, "zero_proj": True, "logit_softcap": 15.0, "muon_momentum": 0.9,
         "embed_lr": 0.01, "head_lr": 0.001}
DEFAULTS = {"emb_dropout": -1.0, "zero_proj": False, "logit_softcap": 0.0, "muon_momentum": 0.95,
            "embed_lr": -1.0, "head_lr": -1.0}


def resolved(**kw):
    return make_config("smoke", "final", device="cpu", precision="fp32", **kw)


def test_defaults_keep_every_hash():
    assert resolved(**DEFAULTS).hash_fields() == resolved().hash_fields()


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_each_knob_is_part_of_the_hash(name):
    assert resolved(**{name: KNOBS[name]}).hash_fields() != resolved().hash_fields()


def test_final2_is_final_plus_the_two_stacked_changes():
    a, b = make_config("full", "final2").to_dict(), make_config("full", "final").to_dict()
    assert {k for k in a if a[k] != b[k]} == {"preset", "mlp", "embed_lr"}
    assert (a["mlp"], a["embed_lr"]) == ("relu2", 0.01)


def model(**kw):
    cfg = resolved(**kw)
    return cfg, build_model(cfg, 512, 1)


def test_relu2_is_relu_squared():
    _, m = model(mlp="relu2")
    mlp = m.blocks[0].mlp.eval()
    x = torch.randn(2, 5, mlp.fc.in_features)
    assert torch.allclose(mlp(x), mlp.out(torch.relu(mlp.fc(x)) ** 2))


def test_zero_proj_makes_every_block_the_identity_at_init():
    _, m = model(zero_proj=True)
    x = torch.randn(2, 7, m.cfg.d_model)
    for b in m.blocks:
        assert torch.equal(b.eval()(x), x)
    _, plain = model()
    assert not torch.equal(plain.blocks[0].eval()(x), x)


def test_softcap_bounds_the_logits():
    cap = 2.0
    _, m = model(logit_softcap=cap)
    _, plain = model()
    with torch.no_grad():
        plain.head.weight.mul_(200)          # large logits
        m.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 512, (2, 16))
    capped, raw = m.eval()(idx)[0], plain.eval()(idx)[0]
    assert raw.abs().max() > 3 * cap and capped.abs().max() <= cap
    assert torch.allclose(capped, cap * torch.tanh(raw / cap), atol=1e-5)


def test_emb_dropout_sets_only_the_embedding_dropout():
    _, m = model(emb_dropout=0.3)
    assert m.drop.p == 0.3 and m.blocks[0].mlp.drop.p == resolved().dropout


def lrs(opts):
    return {id(p): g["lr"] for o in opts for g in o.param_groups for p in g["params"]}


def test_embed_and_head_lrs_reach_their_tensors_and_follow_the_schedule():
    cfg, m = model(embed_lr=0.01, head_lr=0.001)
    opts = build_optimizers(cfg, m, "cpu")
    lr = lrs(opts)
    assert lr[id(m.token_emb.weight)] == 0.01 and lr[id(m.head.weight)] == 0.001
    assert lr[id(m.ln_f.weight)] == cfg.lr and lr[id(m.blocks[0].mlp.fc.weight)] == cfg.muon_lr
    set_lr(opts, 0.5)
    lr = lrs(opts)
    assert lr[id(m.token_emb.weight)] == 0.005 and lr[id(m.head.weight)] == 0.0005
    # unset, one group as before (the committed runs' optimizer state layout)
    cfg0, m0 = model()
    assert len(build_optimizers(cfg0, m0, "cpu")[1].param_groups) == 1


def test_muon_momentum_reaches_muon():
    cfg, m = model(muon_momentum=0.9)
    assert build_optimizers(cfg, m, "cpu")[0].param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("kw,needle", [
    (dict(mlp="relu3"), "mlp='relu3' is not accepted; choose one of: gelu, swiglu, relu2"),
    (dict(emb_dropout=1.5), "emb_dropout=1.5"),
    (dict(embed_lr=-2.0), "embed_lr=-2.0"),
    (dict(head_lr=math.inf), "head_lr=inf"),
    (dict(logit_softcap=-1.0), "logit_softcap=-1.0"),
    (dict(muon_momentum=1.0), "muon_momentum=1.0"),
])
def test_bad_values_are_refused_by_name(kw, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        make_config("full", "final", **kw)
