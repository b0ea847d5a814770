"""The device scripts' choices that need no GPU: which screen points the second screen stacks."""
import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
screen2 = importlib.import_module("gpu_screen2")


class FakePool:
    def __init__(self, losses):
        self.losses = losses

    def loss(self, study, label):
        return self.losses.get(label) if study == screen2.SCREEN else None


def test_stack_takes_clear_wins_one_value_per_knob():
    ref = {"final2": 1.1186, "final2-s1338": 1.1183, "final2-s1339": 1.1188}   # sd 0.00025: threshold 0.001
    pool = FakePool({**ref, "value_embed": 1.1150, "unet": 1.1170, "drop0": 1.1160, "drop0.03": 1.1155,
                     "tied": 1.1180, "ns3": 1.1250})
    stack, members, mean, threshold = screen2.choose_stack(pool)
    assert mean == pytest.approx(1.11857, abs=1e-5) and threshold == pytest.approx(0.001)
    assert [m[0] for m in members] == ["value_embed", "drop0.03", "unet"]   # drop0 loses to drop0.03 (one dropout)
    assert stack == {"value_embed": True, "dropout": 0.03, "unet": True}     # tied (-0.0006) is within the noise


def test_no_reference_no_stack():
    assert screen2.choose_stack(FakePool({"value_embed": 1.0}))[0] == {}
