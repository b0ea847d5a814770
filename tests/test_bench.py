"""The benchmark's FLOP count (every 'fraction of the matmul rate' rests on it) and the bench itself."""
import json

import pytest

from mainrun.bench import PARTS, ab_against, flop_params, format_table, part_of, run_bench
from mainrun.config import make_config
from mainrun.reference import RefGPT
from mainrun.train import build_model


def by_hand(L: int, d: int, V: int, norm_params_per_layer: int) -> int:
    """Matmul weights and biases of a GPT block stack, written out: qkv (3d^2 + 3d), proj (d^2 + d),
    fc (4d^2 + 4d), out (4d^2 + d), two norms per block and one at the end, and the V x d head."""
    per_layer = 3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d + 2 * norm_params_per_layer
    return L * per_layer + norm_params_per_layer + V * d


def test_flop_params_by_hand():
    # baseline: tied head (the token table counts once, as the head), learned positions left out
    base = build_model(make_config("full", "baseline"), 16_000)
    assert base.num_params() == 27_172_864
    assert flop_params(base) == by_hand(6, 512, 16_000, 2 * 512) == 27_172_864 - 128 * 512
    # final: untied head, so the token table is a pure lookup; RoPE has no table
    final = build_model(make_config("full", "final"), 4096)
    assert flop_params(final) == by_hand(5, 192, 4096, 2 * 192)
    assert flop_params(final) == final.num_params() - 4096 * 192
    # the reference model of the original counts the same way
    ref = RefGPT(16_000, 128, 6, 8, 512, 0.1)
    assert flop_params(ref) == flop_params(base)


def test_bench_runs_at_smoke_size(tmp_path):
    cfg = make_config("smoke", lr=1e-3)
    r = run_bench(cfg, reps=1, out_dir=tmp_path, label="smoke-test")
    saved = json.loads((tmp_path / "cpu-smoke-test.json").read_text())
    assert saved["label"] == "smoke-test" and saved["device"] == "cpu"
    for name in ("reference", "ours"):
        row = r["rows"][name]
        assert row["s_per_step"] > 0 and row["gflops"] > 0
        assert row["n_flop_params"] < row["n_params"]           # the position table (reference) / lookups left out
    assert r["speedup_vs_reference"] == pytest.approx(r["rows"]["reference"]["s_per_step"] / r["rows"]["ours"]["s_per_step"])
    assert 0 < r["fraction_of_matmul_ceiling"] and r["eval_tokens_per_s"] > 0
    assert "ours / reference" in format_table(r)
    # where the time goes: every part named, none negative, the step's parts summing to the step
    parts = r["breakdown_s"]
    assert list(parts) == [*PARTS, "evaluation", "data"] and min(parts.values()) >= 0
    assert sum(parts[p] for p in PARTS) == pytest.approx(r["rows"]["ours"]["s_per_step"])
    assert parts["matmul"] > 0 and parts["optimizer"] > 0 and "where the time goes" in format_table(r)


@pytest.mark.parametrize("name, part", [
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::bmm", "matmul"),
    ("graph_0_cpp_fused__log_softmax__log_softmax_backward_data_1", "loss"),
    ("graph_0_cpp_fused__to_copy_embedding_native_dropout_0", "dropout masks"),
    ("aten::bernoulli_", "dropout masks"), ("graph_0_cpp_fused_arange_bitwise_and_mul_3", "dropout masks"),
    ("graph_0_cpp_fused__safe_softmax__to_copy_add_mul_4", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("graph_0_cpp_fused_add_mean_mul_pow_rsqrt_2", "norms and elementwise"), ("aten::gelu", "norms and elementwise"),
    ("aten::mul", "norms and elementwise")])
def test_ops_are_sorted_into_the_parts_of_a_step(name, part):
    assert part_of(name) == part


def test_ab_against_a_commit_times_both_codes_alternately():
    """Today's step against the same code at HEAD: both workers run, alternate, and a knob HEAD lacks is left
    out there and named."""
    spec = {"profile": "smoke", "preset": "baseline", "overrides": {"device": "cpu", "no_such_knob": 1}}
    ab = ab_against("HEAD", dict(spec), {**spec, "overrides": {"device": "cpu"}}, reps=2)
    assert len(ab["before"]["times"]) == len(ab["after"]["times"]) == 2
    assert ab["before"]["unknown_there"] == ["no_such_knob"] and ab["speedup"] > 0


def test_a_cpu_hardware_record_says_whether_bf16_is_native(monkeypatch):
    """Two kinds of 2-core CPU give a 60-minute run different compute: the record tells them apart."""
    from mainrun import host
    for native in (True, False):
        monkeypatch.setattr(host, "native_bf16", lambda device, native=native: native)
        assert host.hardware("cpu")["native_bf16"] is native
