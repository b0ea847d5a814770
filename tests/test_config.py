"""One typed config: profiles, presets, overrides; bad input refused clearly; the rules guard."""
import pytest

from mainrun.config import (STANDIN_SHA256, Config, ConfigError, from_dict, make_config, recorded_config, parse_overrides,
                            rules_check, run_hash)


def test_profiles_and_presets_then_overrides():
    cfg = make_config("quick", "epic1", lr="1e-3", dropout="0.05", tie_embeddings="false")
    assert cfg.optimizer == "adamw" and cfg.lr == 1e-3 and cfg.dropout == 0.05 and cfg.tie_embeddings is False
    assert cfg.num_titles == 10_000                      # from the quick profile
    assert make_config("full") == Config()               # full + baseline = the original's values


@pytest.mark.parametrize("kwargs, words", [
    (dict(optimiser="adamw"), ["optimiser", "accepted", "optimizer"]),
    (dict(optimizer="lion"), ["lion", "sgd, adamw, muon"]),
    (dict(norm="batchnorm"), ["batchnorm", "layernorm, rmsnorm"]),
    (dict(lr="fast"), ["lr", "fast", "not a number"]),
    (dict(lr=-1.0), ["lr=-1.0", "positive"]),
    (dict(n_layer=0), ["n_layer=0", "positive"]),
    (dict(d_model=100, n_head=8), ["d_model=100", "n_head=8"]),
    (dict(block_size=64), ["block_size=64", "64 x 128"]),
    (dict(dropout=1.5), ["dropout=1.5", "[0, 1)"]),
    (dict(epochs="7.5"), ["epochs", "not an integer"]),
    (dict(compile="maybe"), ["compile", "true or false"]),
    (dict(tokenizer="wordpiece"), ["tokenizer='wordpiece'", "bpe, unigram"]),
    (dict(rdrop=-0.5), ["rdrop=-0.5", ">= 0"]),
    (dict(rdrop=1.0, dropout=0.0), ["rdrop=1.0", "dropout > 0"]),
])
def test_bad_values_are_refused_with_what_is_accepted(kwargs, words):
    with pytest.raises(ConfigError) as e:
        make_config("full", **kwargs)
    for w in words:
        assert w in str(e.value)


def test_bad_profile_preset_and_override_syntax():
    with pytest.raises(ConfigError, match="full, quick, smoke"):
        make_config("huge")
    with pytest.raises(ConfigError, match="baseline"):
        make_config("full", "best")
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_overrides(["lr"])
    assert parse_overrides(["lr=3e-4", "optimizer=adamw"]) == {"lr": "3e-4", "optimizer": "adamw"}


def test_round_trip_and_hash():
    cfg = make_config("quick", lr=1e-3)
    assert from_dict(cfg.to_dict()) == cfg
    h = run_hash(cfg, "fp")
    assert run_hash(make_config("quick", lr=1e-3, name="other-name", data="/elsewhere.parquet"), "fp") == h
    assert run_hash(make_config("quick", lr=2e-3), "fp") != h
    assert run_hash(cfg, "other-data") != h


def test_rules_guard():
    standin = {"kind": "file", "sha256": STANDIN_SHA256}
    assert rules_check(make_config("full", optimizer="adamw", lr=1e-3), standin) == (True, [])
    assert rules_check(make_config("full"), {"kind": "hub", "dataset": "julien040/hacker-news-posts"})[0]
    ok, why = rules_check(make_config("full", epochs=8, seed=1), standin)
    assert not ok and any("epochs=8" in r for r in why) and any("seed=1" in r for r in why)
    ok, why = rules_check(make_config("quick"), standin)
    assert not ok and any("num_titles" in r for r in why)
    ok, why = rules_check(make_config("full"), {"kind": "file", "sha256": "0" * 64})
    assert not ok and "stand-in" in why[0]


def test_train_seed_varies_the_run_not_the_split():
    standin = {"kind": "file", "sha256": STANDIN_SHA256}
    base = make_config("full", device="cpu", precision="fp32")
    assert base.rng_seed == 1337 and "train_seed" not in base.hash_fields()   # older hashes unchanged
    extra = make_config("full", train_seed=1338, device="cpu", precision="fp32")
    assert extra.rng_seed == 1338 and extra.seed == 1337                      # same split, other RNG
    assert run_hash(extra, "fp") != run_hash(base, "fp")
    ok, why = rules_check(extra, standin)
    assert not ok and "train_seed=1338" in why[0]


def test_official_metric_runs_in_fp32_by_default():
    cfg = make_config("full", device="cpu", precision="fp32")
    assert cfg.eval_precision == "fp32" and "eval_precision" not in cfg.hash_fields()
    assert run_hash(make_config("full", eval_precision="bf16", device="cpu", precision="fp32"), "fp") != run_hash(cfg, "fp")


def test_notebook_train_parameter_defaults_by_profile():
    from mainrun.config import resolve_train
    # None: a notebook opened in JupyterLab under full never starts an hours-long CPU run by itself
    assert resolve_train("full", None) is False
    assert resolve_train("quick", None) is True and resolve_train("smoke", None) is True
    assert resolve_train("full", True) is True and resolve_train("quick", False) is False
    with pytest.raises(ConfigError, match="train='yes'.*True, False or None"):
        resolve_train("quick", "yes")
    with pytest.raises(ConfigError, match="profile='huge'"):
        resolve_train("huge", None)


def test_knobs_added_later_keep_older_runs_hashes():
    """tokenizer and rdrop came after runs were recorded: at their neutral values they are not hashed
    (the committed ledger keeps its hashes); any other value is part of the run's identity."""
    cfg = make_config("quick", lr=1e-3)
    assert "tokenizer" not in cfg.hash_fields() and "rdrop" not in cfg.hash_fields()
    h = run_hash(cfg, "fp")
    assert run_hash(make_config("quick", lr=1e-3, tokenizer="unigram"), "fp") != h
    assert run_hash(make_config("quick", lr=1e-3, rdrop=0.5), "fp") != h


def test_every_committed_run_keeps_its_hash():
    """The ledger finds runs again by hash: each committed run's config and data fingerprint must still
    give the hash it was recorded under (a new config field that changed old hashes would orphan them)."""
    import json
    from conftest import ROOT
    dirs = sorted((ROOT / "results" / "runs").glob("*-*"))
    assert len(dirs) > 20
    for d in dirs:
        rec = json.loads((d / "config.json").read_text())
        assert run_hash(recorded_config(rec["config"]), rec["data_fingerprint"]) == rec["hash"] == d.name.rsplit("-", 1)[1], d.name


def test_device_is_part_of_a_run():
    """A bf16 run on a CPU and a bf16 run on a GPU are different runs; the two pairs every committed run has
    (cpu/fp32, cuda/bf16) keep the device out of the hash so their hashes stay valid; auto cannot be hashed."""
    from mainrun.config import UNHASHED_EXECUTION
    h = {(d, p): run_hash(make_config("full", "final", device=d, precision=p), "fp")
         for d in ("cpu", "cuda") for p in ("fp32", "bf16")}
    assert len(set(h.values())) == 4
    for pair in UNHASHED_EXECUTION:
        assert "device" not in make_config("full", device=pair[0], precision=pair[1]).hash_fields()
    assert make_config("full", device="cpu", precision="bf16").hash_fields()["device"] == "cpu"
    with pytest.raises(ValueError, match="resolved device and precision"):
        make_config("full").hash_fields()
    # the CPU profiles pin their execution: the same hash whatever the host
    assert (make_config("quick").device, make_config("quick").precision) == ("cpu", "fp32")
    assert (make_config("smoke").device, make_config("smoke").precision) == ("cpu", "fp32")


def test_cli_command_rebuilds_the_config():
    from mainrun.config import cli_command, parse_overrides
    cfg = make_config("quick", "epic1", lr=1e-3, name="x", tie_embeddings=False)
    cmd = cli_command(cfg)
    assert cmd.startswith("python -m mainrun train --profile quick --preset epic1 --set ")
    sets = parse_overrides(cmd.split(" --set ", 1)[1].split())
    assert make_config("quick", "epic1", **sets) == cfg


def test_committed_records_name_no_machine_path():
    """Run records name their data by file name and sha256; no absolute path and no unresolved device."""
    import json
    from conftest import ROOT
    for d in sorted((ROOT / "results" / "runs").glob("*-*")):
        for f in ("config.json", "summary.json"):
            if not (d / f).exists():                # a run still training has no summary yet
                continue
            text = (d / f).read_text()
            assert str(ROOT) not in text and '"path": "/' not in text, (d.name, f)
        cfg = json.loads((d / "config.json").read_text())["config"]
        assert cfg["device"] in ("cpu", "cuda") and cfg["precision"] in ("fp32", "bf16"), d.name
