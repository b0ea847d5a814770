"""The official metric keeps the original's arithmetic and its 64 x 128 shape; full coverage scores every token."""
import math

import pytest
import torch
from torch.nn import functional as F

from mainrun.config import make_config
from mainrun.evaluate import evaluate, full_coverage, official_coverage
from mainrun.train import build_model


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    m = build_model(make_config("smoke", dropout=0.0), 512).eval()
    ids = torch.randint(0, 512, (3 * (64 * 128 + 1) + 500,))
    return m, ids


def test_evaluate_matches_independent_computation(tiny):
    m, ids = tiny
    chars = 123_457
    span = 64 * 128 + 1
    total = 0.0
    with torch.no_grad():
        for s in range(3):                               # 3 full spans; the 500-token tail is dropped
            for r in range(64):                          # row by row, one sequence at a time
                start = s * span + r * 128
                x = ids[start: start + 128].unsqueeze(0)
                y = ids[start + 1: start + 129]
                logp = torch.log_softmax(m(x)[0][0].double(), -1)
                total -= logp[torch.arange(128), y].sum().item()
    assert evaluate(m, ids, chars) == pytest.approx(total / chars, rel=1e-5)


def test_evaluate_always_uses_the_baseline_shape(tiny):
    m, ids = tiny
    shapes = []
    m.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    evaluate(m, ids, 1000)
    assert set(shapes) == {(64, 128)} and len(shapes) == 3


def test_official_coverage():
    span = 64 * 128 + 1
    assert official_coverage(span - 1) == (0, 0.0)
    scored, frac = official_coverage(2 * span + 10)
    assert scored == 2 * 64 * 128 and frac == pytest.approx(scored / (2 * span + 9))


def test_full_coverage_scores_every_target_once(tiny):
    m, ids = tiny
    chars = 99_999
    with torch.no_grad():
        total = 0.0
        for s in range(0, len(ids) - 1, 128):            # windows of 128, the last partial
            x = ids[s: min(s + 128, len(ids) - 1)].unsqueeze(0)
            y = ids[s + 1: s + 1 + x.size(1)]
            total += F.cross_entropy(m(x)[0][0].double(), y, reduction="sum").item()
    out = full_coverage(m, ids, chars)
    assert out["full_tokens"] == len(ids) - 1
    assert out["full_loss"] == pytest.approx(total / chars, rel=1e-5)
    assert out["full_bpc"] == pytest.approx(out["full_loss"] / math.log(2))
    # the official number sums fewer tokens over the same characters, so it is lower
    assert evaluate(m, ids, chars) < out["full_loss"]
