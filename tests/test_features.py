"""Switches that no other test trains with: grad_accum, ema, precision=bf16, compile=true.

Each runs through `mainrun.run` on a tiny split (1,000 titles, half of them validation: 6 optimizer steps
of 16 x 128 tokens) and is checked for something that would not hold if the switch were ignored.
"""
import shutil

import pytest
import torch

import mainrun
import mainrun.ledger as ledger
from conftest import have_standin, isolated_module
from mainrun.config import make_config

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline HN corpus (MAINRUN_DATA)")

TINY = dict(num_titles=1000, val_frac=0.5, dropout=0.0)
ADAMW = dict(TINY, optimizer="adamw", lr=3e-3)


def train_log(summary: dict) -> list[dict]:
    (d,) = (ledger.results_root("smoke") / "runs").glob(f"*-{summary['hash']}")
    return ledger.read_log(d / "log.jsonl")


def losses(summary: dict, event: str = "training_step") -> list[float]:
    return [e["loss"] for e in train_log(summary) if e["event"] == event]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, shared_cache):
    """The AdamW tiny run with every switch off, and its training losses."""
    with isolated_module(tmp_path_factory, shared_cache, "plain"):
        s = mainrun.run(make_config("smoke", **ADAMW), progress=False)
        return s, losses(s), losses(s, "validation_step")


def test_grad_accum_equals_the_large_batch(isolated):
    """2 micro-batches of 8 make the same optimizer steps as one batch of 16 (the same tokens in the same
    order, the gradient averaged): SGD without clipping, so a gradient summed instead of averaged, or one
    micro-batch per step, changes the losses."""
    base = dict(TINY, optimizer="sgd", lr=0.5, grad_clip=0.0)
    big = mainrun.run(make_config("smoke", batch_size=16, **base), progress=False)
    acc = mainrun.run(make_config("smoke", batch_size=8, grad_accum=2, **base), progress=False)
    assert acc["hash"] != big["hash"] and acc["steps"] == big["steps"] >= 5
    assert losses(acc) == pytest.approx(losses(big), rel=1e-5)
    assert losses(acc)[-1] < losses(acc)[0] - 0.05                  # the steps do move the weights
    assert acc["final_val_loss"] == pytest.approx(big["final_val_loss"], rel=1e-5)
    one = mainrun.run(make_config("smoke", batch_size=8, **base), progress=False)    # no accumulation
    assert one["steps"] == 2 * big["steps"] and losses(one)[0] != pytest.approx(losses(big)[0], rel=1e-4)


def test_ema_evaluates_the_averaged_weights(plain):
    """The EMA does not touch training (same training losses) but is what gets evaluated: after step 1 it is
    a copy of the weights (same loss), later it lags behind them (another loss)."""
    s_plain, train_plain, val_plain = plain
    s = mainrun.run(make_config("smoke", ema=0.9, **ADAMW), progress=False)
    assert losses(s) == train_plain
    val = losses(s, "validation_step")
    assert val[0] == val_plain[0] and val[-1] != val_plain[-1] and s["final_val_loss"] == val[-1]
    assert s["full_val_loss"] != s_plain["full_val_loss"]


def test_bf16_trains_under_autocast(plain):
    """precision=bf16 runs the training matmuls in bf16 (slow on an AVX2 CPU, so 6 steps): recorded as such,
    finite, and its losses are near the fp32 run's but not equal to them. Evaluation stays fp32."""
    s_plain, train_plain, _ = plain
    s = mainrun.run(make_config("smoke", precision="bf16", **ADAMW), progress=False)
    assert s["status"] == "finished" and s["precision"] == "bf16" and s["hash"] != s_plain["hash"]
    train = losses(s)
    assert all(map(torch.isfinite, torch.tensor(train)))
    assert train[0] != train_plain[0] and train[0] == pytest.approx(train_plain[0], rel=1e-2)
    assert s["final_val_loss"] == pytest.approx(s_plain["final_val_loss"], rel=2e-2)


def test_compile_trains_a_compiled_model(plain):
    """compile=true trains through torch.compile (inductor): dynamo captures the model's graph, and the losses
    are those of the eager run to float tolerance (dropout 0). The first compile on a cold cache takes
    tens of seconds on 2 cores; skipped only where inductor has no C++ compiler."""
    from torch._dynamo.utils import counters
    from torch._inductor import cpp_builder

    try:
        compiler = cpp_builder.get_cpp_compiler()
    except Exception as e:                                  # noqa: BLE001 - any failure to find one
        pytest.skip(f"torch.compile's inductor backend finds no C++ compiler here: {e}")
    if shutil.which(compiler) is None:
        pytest.skip(f"torch.compile's inductor backend needs the C++ compiler {compiler!r}, not found on PATH")
    s_plain, train_plain, _ = plain
    counters.clear()
    s = mainrun.run(make_config("smoke", compile=True, **ADAMW), progress=False)
    assert counters["stats"]["unique_graphs"] >= 1              # the training step went through dynamo
    assert s["status"] == "finished" and s["hash"] != s_plain["hash"]
    assert losses(s) == pytest.approx(train_plain, rel=1e-4)
    assert s["final_val_loss"] == pytest.approx(s_plain["final_val_loss"], rel=1e-4)
