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


def test_wsd_sqrt_cooldown():
    cfg = make_config("full", schedule="wsd", warmup_frac=0.05, decay_frac=0.2, min_lr_frac=0.1, decay_shape="sqrt")
    total = 1000
    assert lr_multiplier(cfg, 799, total) == 1.0
    assert lr_multiplier(cfg, 849, total) == pytest.approx(1 - 0.9 * math.sqrt(0.25))   # a quarter into the decay
    assert lr_multiplier(cfg, 999, total) == pytest.approx(0.1)
    linear = make_config("full", schedule="wsd", warmup_frac=0.05, decay_frac=0.2, min_lr_frac=0.1)
    assert all(lr_multiplier(cfg, s, total) <= lr_multiplier(linear, s, total) for s in range(800, 1000))


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


def newton_schulz_fp64(g: torch.Tensor, coeffs: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """The quintic Newton-Schulz iteration (Muon's), written out here in float64: the reference."""
    a, b, c = coeffs
    x = g.to(torch.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / max(x.norm().item(), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_fp32_muon_matches_torch_muon():
    """muon_ns=fp32 changes only the dtype of torch's Newton-Schulz iteration: its result is within fp32
    rounding of a float64 iteration (torch's bf16 one is not), one optimizer step moves the weights by what
    torch's Muon moves them (to bf16 rounding), and torch's function is restored afterwards."""
    import torch.optim._muon as impl
    from mainrun.optim import Fp32Muon, _newton_schulz_fp32

    g = torch.Generator().manual_seed(3)
    grad = torch.randn(96, 40, generator=g)
    coeffs = (impl.DEFAULT_A, impl.DEFAULT_B, impl.DEFAULT_C)
    exact = newton_schulz_fp64(grad, coeffs, 5, 1e-7)
    ours = _newton_schulz_fp32(grad, coeffs, 5, 1e-7)
    theirs = impl._zeropower_via_newtonschulz(grad, coeffs, 5, 1e-7).float()
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert exact.dtype == torch.float64 and ours.dtype == torch.float32 and ours.shape == grad.shape
    assert 0 < rel(ours, exact) < 1e-5 < rel(theirs, exact) < 3e-2

    # one step of each optimizer from the same weights and gradients, no weight decay: only the
    # orthogonalised update moves the weights, and the two updates must agree to bf16 rounding (~1%)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((64, 32), (32, 96))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins):
        p.grad = torch.randn(p.shape, generator=g)
        q.grad = p.grad.clone()
    start = [p.detach().clone() for p in params]
    before = impl._zeropower_via_newtonschulz
    Fp32Muon(params, lr=0.02, weight_decay=0.0).step()
    torch.optim.Muon(twins, lr=0.02, weight_decay=0.0).step()
    assert impl._zeropower_via_newtonschulz is before
    for p, q, p0 in zip(params, twins, start):
        ours, theirs = p.detach() - p0, q.detach() - p0
        assert ours.abs().max() > 0 and not torch.equal(ours, theirs)
        assert rel(ours, theirs) < 3e-2
        assert rel(1.25 * ours, theirs) > 3e-2 and rel(0.75 * ours, theirs) > 3e-2   # a 25% error fails
        # and ours is the float64 step to fp32 rounding: first step of Nesterov momentum 0.95 from a zero
        # buffer, Muon's learning rate scaled by sqrt(max(1, rows / cols))
        update = p.grad.double().lerp(0.05 * p.grad.double(), 0.95)
        step = -0.02 * max(1.0, p.shape[0] / p.shape[1]) ** 0.5 * newton_schulz_fp64(update, coeffs, 5, 1e-7)
        assert rel(ours, step) < 1e-4
    cfg = make_config("smoke", optimizer="muon", muon_ns="fp32")
    opts = build_optimizers(cfg, build_model(cfg, 512), "cpu")
    assert type(opts[0]) is Fp32Muon
