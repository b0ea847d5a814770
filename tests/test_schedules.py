"""Schedules are pure functions of the step; check the LR at chosen steps."""
import math

import pytest
import torch

from mainrun.config import make_config
from mainrun.optim import build_optimizers, lr_multiplier, param_groups, peak_lr, set_lr
from mainrun.train import build_model


def test_cosine_matches_the_original_scheduler():
    cfg = make_config("full")
    total = 987
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    for step in range(total):
        assert lr_multiplier(cfg, step, total) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9)
        opt.step()
        sched.step()


def test_warmup_cosine_endpoints():
    cfg = make_config("full", schedule="warmup_cosine", warmup_frac=0.1, min_lr_frac=0.1)
    total = 1000
    assert lr_multiplier(cfg, 0, total) == pytest.approx(1 / 100)
    assert lr_multiplier(cfg, 49, total) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 99, total) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 100, total) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 550, total) == pytest.approx(0.1 + 0.9 * 0.5)          # halfway through the decay
    assert lr_multiplier(cfg, 999, total) == pytest.approx(0.1, abs=1e-4)


def test_wsd_phases():
    cfg = make_config("full", schedule="wsd", warmup_frac=0.05, decay_frac=0.2, min_lr_frac=0.0)
    total = 1000
    assert lr_multiplier(cfg, 0, total) == pytest.approx(1 / 50)
    assert lr_multiplier(cfg, 50, total) == 1.0 and lr_multiplier(cfg, 799, total) == 1.0
    assert lr_multiplier(cfg, 899, total) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 999, total) == pytest.approx(0.0)


def test_constant_and_linear_scaling():
    assert lr_multiplier(make_config("full", schedule="constant"), 500, 1000) == 1.0
    cfg = make_config("full", optimizer="adamw", lr=3e-4, batch_size=32, grad_accum=4, lr_scaling="linear")
    assert peak_lr(cfg) == pytest.approx(3e-4 * 128 / 64)
    assert peak_lr(make_config("full", lr=3e-4, batch_size=32, grad_accum=4)) == pytest.approx(3e-4)


def test_param_groups_and_weight_decay():
    m = build_model(make_config("smoke"), 512)
    g = param_groups(m)
    assert sum(p.numel() for v in g.values() for p in v) == m.num_params()
    assert all(p.ndim == 2 for p in g["hidden"]) and all(p.ndim == 1 for p in g["other"])
    opt, = build_optimizers(make_config("smoke", optimizer="adamw", weight_decay=0.1), m, "cpu")
    decayed = [grp for grp in opt.param_groups if grp["weight_decay"] > 0]
    assert len(decayed) == 1 and decayed[0]["params"] == g["hidden"]      # no decay on norms, biases, embeddings


def test_muon_splits_hidden_matrices():
    m = build_model(make_config("smoke"), 512)
    muon, adamw = build_optimizers(make_config("smoke", optimizer="muon", muon_lr=0.02, lr=1e-3), m, "cpu")
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert set(map(id, muon.param_groups[0]["params"])) == set(map(id, param_groups(m)["hidden"]))
    set_lr([muon, adamw], 0.5)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.01) and adamw.param_groups[0]["lr"] == pytest.approx(5e-4)
    x = torch.randint(0, 512, (2, 128))
    m(x, x)[1].backward()
    muon.step()
    adamw.step()
    assert all(math.isfinite(p.sum().item()) for p in m.parameters())
