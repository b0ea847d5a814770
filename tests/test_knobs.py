"""The issue-14 knobs: each is neutral (same hash) at its default, changes what it names when set, and refuses
bad values by name. Pure model/optimizer checks: no data, no training."""
import math

import pytest
import torch

from mainrun.config import ConfigError, make_config
from mainrun.optim import build_optimizers, set_lr
from mainrun.train import build_model

KNOBS = {"mlp": "relu2", "emb_dropout": 0.2, "zero_proj": True, "logit_softcap": 15.0, "muon_momentum": 0.9,
         "embed_lr": 0.01, "head_lr": 0.001, "drop_path": 0.1, "unet": True, "value_embed": True,
         "muon_nesterov": False, "muon_ns_steps": 3, "decay_shape": "sqrt", "z_loss": 1e-4,
         "mlp_mult": 3, "ensemble": 2, "dropout_rng": "hash"}
DEFAULTS = {"emb_dropout": -1.0, "zero_proj": False, "logit_softcap": 0.0, "muon_momentum": 0.95,
            "embed_lr": -1.0, "head_lr": -1.0, "drop_path": 0.0, "unet": False, "value_embed": False,
            "muon_nesterov": True, "muon_ns_steps": 5, "decay_shape": "linear", "z_loss": 0.0,
            "mlp_mult": 4, "ensemble": 1, "dropout_rng": "torch"}


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


def record_point(folder: str, study: str, label: str):
    """A point's config as its record spec (records/<folder>/<study>.yaml) builds it."""
    import yaml

    from mainrun.studies import build_configs
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "records" / folder / f"{study}.yaml").read_text())
    spec = {k: v for k, v in spec.items() if k != "profile"}
    return next(cfg for p, cfg in build_configs(spec, "full", study) if p.label == label)


def test_final4_is_final3_plus_the_fourth_screens_stack_and_keeps_its_hash():
    a, b = make_config("full", "final4").to_dict(), make_config("full", "final3").to_dict()
    assert {k for k in a if a[k] != b[k]} == {"preset", "weight_decay", "n_head", "beta1"}
    gpu = dict(device="cuda", precision="bf16", checkpoint_every=0)
    screened = record_point("2026-11-27-gpu-screen4", "gpu14_screen4", "wd-h2-b1")
    assert make_config("full", "final4", **gpu).hash_fields() == screened.hash_fields()
    # the fifth screen's 2-model ensemble of final4 is the fourth's ens2-wd-h2-b1: the same run
    ens = record_point("2026-11-27-gpu-screen4", "gpu14_screen4", "ens2-wd-h2-b1")
    assert record_point("2026-11-27-gpu-screen5", "gpu14_screen5", "ens2").hash_fields() == ens.hash_fields()


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


@pytest.mark.parametrize("head_lr", [-1.0, 0.001])
def test_every_ensemble_members_head_trains_at_the_head_lr(head_lr):
    """Code version 2: a member's head (members.<i>.head.weight) gets head_lr (else lr) like a single model's;
    version 1 gave it embed_lr, and a config pinned to version 1 still does (its runs retrain bit for bit)."""
    cfg, m = model(ensemble=3, embed_lr=0.02, head_lr=head_lr)
    lr, want = lrs(build_optimizers(cfg, m, "cpu")), cfg.lr if head_lr < 0 else head_lr
    for member in m.members:
        assert lr[id(member.head.weight)] == want and lr[id(member.token_emb.weight)] == 0.02
    old, m1 = model(ensemble=3, embed_lr=0.02, head_lr=head_lr, code_version=1)
    assert all(lrs(build_optimizers(old, m1, "cpu"))[id(x.head.weight)] == 0.02 for x in m1.members)


def test_code_version_is_hashed_only_where_a_change_touches_the_config():
    from mainrun.config import code_version, run_hash
    single, ens = resolved(embed_lr=0.02), resolved(embed_lr=0.02, ensemble=3)
    assert (code_version(single), code_version(ens)) == (1, 2)
    assert run_hash(single, "fp") == run_hash(resolved(embed_lr=0.02, code_version=1), "fp")
    assert run_hash(ens, "fp") != run_hash(resolved(embed_lr=0.02, ensemble=3, code_version=1), "fp")
    assert code_version(resolved(ensemble=3)) == 1          # no embed_lr or head_lr: no separate head group
    with pytest.raises(ConfigError, match="code_version=9"):
        resolved(code_version=9)


def test_hash_dropout_drops_at_its_rate_and_keeps_the_expectation():
    from mainrun.model import hash_dropout
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = hash_dropout(x, 0.1)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.003 and abs(y.mean().item() - 1.0) < 0.01
    assert not torch.equal(y, hash_dropout(x, 0.1))                    # a new seed per call
    torch.manual_seed(0)
    assert torch.equal(y, hash_dropout(x, 0.1))                        # from torch's generator
    assert torch.equal(hash_dropout(x, 0.1, training=False), x) and torch.equal(hash_dropout(x, 0.0), x)
    # neighbouring elements are not correlated (an index hash, not a stride pattern)
    keep = (y != 0).float()
    assert abs(torch.corrcoef(torch.stack([keep[:-1], keep[1:]]))[0, 1].item()) < 0.01


def test_dropout_rng_hash_is_the_same_model_in_evaluation():
    _, a = model(dropout_rng="hash")
    _, b = model()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 512, (2, 16))
    assert torch.allclose(a.eval()(idx)[0], b.eval()(idx)[0], atol=1e-5)


def test_muon_momentum_reaches_muon():
    cfg, m = model(muon_momentum=0.9)
    assert build_optimizers(cfg, m, "cpu")[0].param_groups[0]["momentum"] == 0.9


def test_muon_nesterov_and_ns_steps_reach_muon():
    cfg, m = model(muon_nesterov=False, muon_ns_steps=3)
    group = build_optimizers(cfg, m, "cpu")[0].param_groups[0]
    assert group["nesterov"] is False and group["ns_steps"] == 3


def test_default_model_has_no_optional_parameters():
    names = set(dict(model()[1].named_parameters()))
    assert not any(k in n for n in names for k in ("value_emb", "ve_gate", "skip_weights"))


def test_value_embedding_reaches_every_layer_and_its_optimizer_group():
    cfg, m = model(value_embed=True, embed_lr=0.01)
    assert m.value_emb.weight.shape == (512, cfg.d_model)
    lr = lrs(build_optimizers(cfg, m, "cpu"))
    assert lr[id(m.value_emb.weight)] == 0.01 and lr[id(m.blocks[0].attn.ve_gate)] == cfg.lr   # AdamW, not Muon
    idx = torch.randint(0, 512, (2, 16))
    m.eval()
    before = m(idx)[0]
    with torch.no_grad():
        for b in m.blocks:
            b.attn.ve_gate.zero_()         # gates at zero: the plain model, whatever the value embedding holds
    _, plain = model()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if "value_emb" not in k and "ve_gate" not in k})
    assert torch.allclose(m(idx)[0], plain.eval()(idx)[0], atol=1e-6)
    assert not torch.allclose(before, plain(idx)[0], atol=1e-4)


def block_io(m):
    """Each block's input and output in one forward pass: ({i: input}, {i: output})."""
    m.eval()
    seen = []
    for i, b in enumerate(m.blocks):
        b.register_forward_pre_hook(lambda mod, args, i=i: seen.append((i, args[0].clone())))
        b.register_forward_hook(lambda mod, args, out, i=i: seen.append((i, out.clone())))
    m(torch.randint(0, 512, (1, 8)))
    return dict(seen[0::2]), dict(seen[1::2])


def test_unet_skips_join_mirrored_blocks():
    cfg, m = model(unet=True, n_layer=4)
    assert m.skip_weights.tolist() == [1.0, 1.0]
    inp, out = block_io(m)
    assert torch.allclose(inp[1], out[0])                       # no skip into the encoder half
    assert torch.allclose(inp[2], out[1] + out[1])              # block 2 gets block 1's output (weight 1)
    assert torch.allclose(inp[3], out[2] + out[0])              # block 3 gets block 0's


def test_unet_with_an_odd_depth_leaves_the_middle_block_alone():
    cfg, m = model(unet=True, n_layer=5)                        # final3's depth
    with torch.no_grad():
        m.skip_weights.copy_(torch.tensor([0.5, 2.0]))
    inp, out = block_io(m)
    assert torch.allclose(inp[1], out[0]) and torch.allclose(inp[2], out[1])   # encoder, then the middle block
    assert torch.allclose(inp[3], out[2] + 0.5 * out[1])        # first decoder block: the last encoder block's
    assert torch.allclose(inp[4], out[3] + 2.0 * out[0])        # last decoder block: the first encoder block's


def test_drop_path_rises_with_depth_and_is_off_in_eval():
    cfg, m = model(drop_path=0.3, n_layer=4)
    assert [b.drop_path for b in m.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    from mainrun.model import drop_branch
    y = torch.ones(4000, 3, 2)
    kept = drop_branch(y, 0.25, training=True)
    rows = kept[:, 0, 0]
    assert rows.unique().tolist() == pytest.approx([0.0, 1 / 0.75])   # whole sequences dropped or scaled up
    assert torch.equal(kept, rows[:, None, None].expand_as(y))
    assert (rows == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.equal(drop_branch(y, 0.25, training=False), y)


def test_z_loss_adds_the_squared_log_partition_to_the_objective_only():
    from mainrun.train import Trainer
    cfg, m = model(z_loss=0.1)
    t = Trainer.__new__(Trainer)
    t.cfg, t.step_fn = cfg, m.eval()
    xb, yb = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    logged, objective = t.objective(xb, yb)
    logits, ce = m(xb, yb)
    assert torch.equal(logged, ce)
    assert objective.item() == pytest.approx((ce + 0.1 * logits.logsumexp(-1).square().mean()).item(), rel=1e-6)
    t.cfg = resolved()
    assert torch.equal(t.objective(xb, yb)[1], ce)


@pytest.mark.parametrize("kw,needle", [
    (dict(mlp="relu3"), "mlp='relu3' is not accepted; choose one of: gelu, swiglu, relu2"),
    (dict(emb_dropout=1.5), "emb_dropout=1.5"),
    (dict(embed_lr=-2.0), "embed_lr=-2.0"),
    (dict(head_lr=math.inf), "head_lr=inf"),
    (dict(logit_softcap=-1.0), "logit_softcap=-1.0"),
    (dict(muon_momentum=1.0), "muon_momentum=1.0"),
    (dict(drop_path=1.0), "drop_path=1.0"),
    (dict(z_loss=-1e-4), "z_loss=-0.0001"),
    (dict(muon_ns_steps=0), "muon_ns_steps=0"),
    (dict(decay_shape="cosine"), "decay_shape='cosine' is not accepted; choose one of: linear, sqrt"),
    (dict(decay_shape="sqrt", schedule="cosine"), "decay_shape='sqrt' shapes the wsd decay"),
    (dict(mlp_mult=0), "mlp_mult=0"),
    (dict(ensemble=0), "ensemble=0"),
    (dict(ensemble=2, z_loss=1e-4), "ensemble=2 trains each member on its own cross-entropy"),
    (dict(ensemble=3, rdrop=0.5), "ensemble=3 trains each member"),
])
def test_bad_values_are_refused_by_name(kw, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        make_config("full", "final", **kw)


def test_mlp_mult_sets_the_hidden_width():
    for k in (2, 3, 6):
        _, m = model(mlp="relu2", mlp_mult=k)
        assert m.blocks[0].mlp.fc.out_features == k * m.cfg.d_model == m.blocks[0].mlp.out.in_features


def test_ensemble_predicts_the_mean_probability_of_independent_members():
    from mainrun.model import Ensemble
    cfg, m = model(ensemble=3)
    assert isinstance(m, Ensemble) and len(m.members) == 3
    w = [mem.token_emb.weight for mem in m.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])      # each member its own init
    _, single = model()
    assert torch.equal(single.token_emb.weight, w[0])                       # the first is the lone model's
    assert m.num_params() == 3 * single.num_params()
    m.eval()
    xb, yb = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    logits, loss = m(xb, yb)
    outs = [mem(xb, yb) for mem in m.members]
    mean_p = torch.stack([torch.softmax(lg, -1) for lg, _ in outs]).mean(0)
    assert torch.allclose(logits.exp(), mean_p, atol=1e-6)
    assert loss.item() == pytest.approx(sum(l.item() for _, l in outs) / 3, rel=1e-6)
    # the objective gives each member the gradient of its own cross-entropy, as if trained alone
    from mainrun.train import Trainer
    t = Trainer.__new__(Trainer)
    t.cfg, t.step_fn = cfg, m
    logged, objective = t.objective(xb, yb)
    objective.backward()
    g_objective = m.members[0].token_emb.weight.grad.clone()
    m.zero_grad()
    outs[0][1].backward()
    assert g_objective.abs().sum() > 0
    assert torch.allclose(g_objective, m.members[0].token_emb.weight.grad, atol=1e-7)
    m.eos_id = 7
    assert all(mem.eos_id == 7 for mem in m.members)


def test_final7_is_three_final4_models_compiled_with_one_validation_pass_per_epoch():
    a, b = make_config("full", "final7").to_dict(), make_config("full", "final4").to_dict()
    assert {k for k in a if a[k] != b[k]} == {"preset", "ensemble", "compile", "evals_per_epoch"}
    assert (a["ensemble"], a["compile"], a["evals_per_epoch"]) == (3, True, 1)
    ens3 = record_point("2026-11-27-gpu-screen5", "gpu14_screen5", "ens3")   # the fifth screen's ensemble of final4
    assert make_config("full", "final7", device="cuda", precision="bf16", checkpoint_every=0, compile=False,
                       evals_per_epoch=ens3.evals_per_epoch).hash_fields() == ens3.hash_fields()


def test_an_ensemble_training_step_skips_the_mixture_and_keeps_the_loss_and_gradients():
    _, m = model(ensemble=2, dropout=0.0)        # no dropout: training and eval mode compute the same loss
    xb, yb = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    m.eval()
    logits, loss = m(xb, yb)
    loss.backward()
    g_eval = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.train()
    none, train_loss = m(xb, yb)
    train_loss.backward()
    assert logits is not None and none is None
    assert torch.equal(train_loss, loss)
    assert all(torch.equal(g, p.grad) for g, p in zip(g_eval, m.parameters()))
    # the training objective in train mode (no logits to read) gives each member its own CE's gradient
    from mainrun.train import Trainer
    t = Trainer.__new__(Trainer)
    t.cfg, t.step_fn = make_config("smoke", "final", device="cpu", precision="fp32", ensemble=2, dropout=0.0), m
    m.zero_grad()
    logged, objective = t.objective(xb, yb)
    objective.backward()
    assert torch.equal(logged, loss)
    g0 = m.members[0].token_emb.weight.grad.clone()
    m.zero_grad()
    m.members[0](xb, yb)[1].backward()
    assert torch.allclose(g0, m.members[0].token_emb.weight.grad, atol=1e-7) and g0.abs().sum() > 0


def test_ensemble_members_fill_the_same_optimizer_groups_as_one_model():
    from mainrun.optim import param_groups
    _, single = model()
    _, m = model(ensemble=2)
    a, b = param_groups(single), param_groups(m)
    assert {k: 2 * len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}


def test_relative_cost_counts_matmul_flops_per_token():
    from mainrun.stats import relative_cost
    ref = make_config("full", "final3")
    assert relative_cost(ref, ref) == 1.0
    assert relative_cost(make_config("full", "final3", ensemble=2), ref) == 2.0
    assert relative_cost(make_config("full", "final3", n_layer=6, mlp_mult=3), ref) == 1.0   # 6 x 10 = 5 x 12
    assert relative_cost(make_config("full", "final3", n_head=2), ref) == 1.0                 # heads cost nothing
    half = relative_cost(make_config("full", "final3", d_model=128, n_head=2), ref)
    assert half == (5 * 12 * 128 ** 2 + 128 * 4096) / (5 * 12 * 192 ** 2 + 192 * 4096)
