"""The Dask engine (mainrun.cluster), the Optuna search (mainrun.search) and the packing benchmark
(mainrun.bench, bench --sweep): CPU only, smoke profile, local clusters of worker processes, no network."""
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from conftest import STANDIN, have_standin

pytest.importorskip("distributed")
optuna = pytest.importorskip("optuna")

from mainrun import bench, cluster, ledger, search, sweep, train  # noqa: E402
from mainrun.config import STANDIN_SHA256  # noqa: E402
from mainrun.data import file_sha256  # noqa: E402
from mainrun.train import resolve_job, run  # noqa: E402

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline stand-in corpus (MAINRUN_DATA)")

TIMEOUT = 180   # seconds for any one wait on the cluster: a broken engine fails, never hangs
# smoke runs at batch 32: 33 steps each (the tests time the engine, not the model)
SPEC = {"base": {"batch_size": 32}, "points": {"a": {}, "b": {"lr": 1e-2}, "c": {"dropout": 0.0}, "boom": {"lr": 1e4}}}
SEARCH = {"search": {"space": {"lr": {"log_uniform": [1e-3, 3e-2]}, "dropout": {"uniform": [0.0, 0.2]}},
                     "trials": 4, "parallel": 2, "prune": True, "prune_startup": 2, "startup_trials": 2},
          "base": {"batch_size": 32, "evals_per_epoch": 3}}


@pytest.fixture(autouse=True)
def bounded_waits(monkeypatch):
    monkeypatch.setattr(cluster, "TIMEOUT", TIMEOUT)


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory):
    """The workers' own environment: no usable MAINRUN_DATA (the titles must come through the cluster), their
    own data cache and checkpoint folder."""
    d = tmp_path_factory.mktemp("workers")
    return {"MAINRUN_DATA": str(d / "no-such-titles.parquet"), "MAINRUN_CACHE": str(d / "cache"),
            "MAINRUN_CHECKPOINTS": str(d / "ckpt"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def client(worker_env):
    """A LocalCluster of 2 worker processes, 1 thread each, no dashboard (cluster.local_cluster)."""
    from distributed import Client

    with cluster.local_cluster(2, env=worker_env, silence_logs=logging.CRITICAL) as lc, Client(lc) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def _summaries(root: Path) -> dict[str, dict]:
    return {d.name: ledger.read_json(d / "summary.json") for d in sorted((root / "runs").iterdir())}


def test_cluster_sweep_matches_sequential(client, tmp_path, monkeypatch):
    monkeypatch.setenv("MAINRUN_RESULTS", str(tmp_path / "seq"))
    seq = sweep.run_sweep(SPEC, "smoke", "eq", progress=False)
    monkeypatch.setenv("MAINRUN_RESULTS", str(tmp_path / "clu"))
    clu = sweep.run_sweep(SPEC, "smoke", "eq", progress=False, cluster=client)

    assert list(seq["status"]) == ["finished"] * 3 + ["diverged"]     # a diverged point is recorded, the sweep goes on
    cols = ["label", "hash", "status", "final_val_loss", "full_val_bpc"]
    assert seq[cols].fillna(-1).equals(clu[cols].fillna(-1))
    a, b = _summaries(tmp_path / "seq"), _summaries(tmp_path / "clu")
    assert list(a) == list(b)
    for name in a:
        for k in ("hash", "status", "final_val_loss", "full_val_loss", "steps", "data_source", "official"):
            assert a[name][k] == b[name][k], (name, k)
        assert (json.loads((tmp_path / "seq" / "runs" / name / "config.json").read_text())
                == json.loads((tmp_path / "clu" / "runs" / name / "config.json").read_text()))
    study = Path("studies") / "smoke" / "eq.json"
    assert (tmp_path / "seq" / study).read_text() == (tmp_path / "clu" / study).read_text()
    assert not (tmp_path / "clu" / ".incoming").exists()                  # no half folder left behind

    # a driver started again sends out nothing: every point is in the ledger by hash (an unreachable scheduler
    # address proves no connection is even made)
    again = sweep.run_sweep(SPEC, "smoke", "eq", progress=False, cluster="tcp://127.0.0.1:9")
    assert again[cols].fillna(-1).equals(clu[cols].fillna(-1))
    assert _summaries(tmp_path / "clu") == b


def test_killed_worker_retries_and_resumes_from_its_checkpoint(client, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"

    def kill_once(cfg, step):          # runs on the worker: the first attempt dies after its step-10 checkpoint
        if step == 10 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    spec = {"base": {"batch_size": 32, "checkpoint_every": 5}, "points": {"k": {"lr": 3e-3}}}
    pairs = sweep.build_configs(spec, "smoke", "kill")
    jobs = [resolve_job(cfg, label=p.label) for p, cfg in pairs]
    [summary] = cluster.run_points(jobs, client, cluster.data_files(jobs), "kill", timeout=TIMEOUT, on_step=kill_once)

    assert marker.exists()
    assert summary["status"] == "finished" and summary["resumes"] == 1
    runs = [d for d in (tmp_path / "results" / "runs").iterdir() if d.name.endswith(summary["hash"])]
    assert len(runs) == 1
    events = [e["event"] for e in ledger.read_log(runs[0] / "log.jsonl")]
    assert events.count("resumed") == 1 and events.count("hyperparameters_configured") == 1
    # the resumed run ends exactly where an uninterrupted one does
    monkeypatch.setenv("MAINRUN_RESULTS", str(tmp_path / "ref"))
    ref = run(pairs[0][1], progress=False)
    assert (ref["hash"], ref["final_val_loss"], ref["full_val_loss"]) == (
        summary["hash"], summary["final_val_loss"], summary["full_val_loss"])


def test_interrupted_search_resumes_without_rerunning_trials(client, tmp_path):
    class Cut(Exception):
        pass

    told = []

    def cut_after_two(number, summary):
        told.append(number)
        if len(told) == 2:
            raise Cut()

    with pytest.raises(Cut):
        search.run_search(SEARCH, "smoke", "srch", cluster=client, progress=False, timeout=TIMEOUT,
                          on_trial=cut_after_two)
    storage = search.storage_path("smoke", "srch")
    assert storage.exists()
    first = {t.number: t for t in search.open_study("smoke", "srch").get_trials()}
    assert [first[n].state.name for n in sorted(first)] == ["COMPLETE", "COMPLETE", "RUNNING"]
    before = _summaries(tmp_path / "results")
    assert len(before) == 2

    told.clear()
    df = search.run_search(SEARCH, "smoke", "srch", cluster=client, progress=False, timeout=TIMEOUT,
                           on_trial=lambda n, s: told.append(n))
    assert told == [2, 3]                                             # t0 and t1 were not run again
    assert list(df["trial"]) == [0, 1, 2, 3] and df["state"].isin(["COMPLETE", "PRUNED"]).all()
    assert df.loc[2, "param_lr"] == first[2].params["lr"]              # the cut trial kept its parameters
    after = _summaries(tmp_path / "results")
    assert {k: after[k] for k in before} == before and len(after) == 4
    record = ledger.read_json(sweep.studies_dir("smoke") / "srch.json")
    assert [r["label"] for r in record["rows"]] == ["t0", "t1", "t2", "t3"]

    # complete: asked again (even with a scheduler that cannot be reached) it trains, connects to and writes nothing
    journal, study_record = storage.read_bytes(), (sweep.studies_dir("smoke") / "srch.json").read_bytes()
    again = sweep.run_sweep(SEARCH, "smoke", "srch", cluster="tcp://127.0.0.1:9", progress=False)
    assert again["value"].equals(df["value"]) and _summaries(tmp_path / "results") == after
    assert storage.read_bytes() == journal
    assert (sweep.studies_dir("smoke") / "srch.json").read_bytes() == study_record
    # storage lost: the search asks for the same trials (seeded per trial) and tells each from the ledger by hash
    shutil.move(storage, tmp_path / "old.optuna.jsonl")
    rebuilt = search.run_search(SEARCH, "smoke", "srch", cluster=None, progress=False)
    assert list(rebuilt["hash"]) == list(df["hash"]) and list(rebuilt["state"]) == list(df["state"])
    assert _summaries(tmp_path / "results") == after


def test_data_reaches_workers_through_the_cluster(client, worker_env, tmp_path, monkeypatch):
    src = tmp_path / "driver" / "titles-copy.parquet"
    src.parent.mkdir()
    shutil.copy(STANDIN, src)
    monkeypatch.setenv("MAINRUN_DATA", str(src))
    pairs = sweep.build_configs({"base": {"batch_size": 32}, "points": {"d": {"lr": 2e-3}}}, "smoke", "data")
    jobs = [resolve_job(cfg, label=p.label) for p, cfg in pairs]
    files = cluster.data_files(jobs)
    src.unlink()                                      # the driver's file is gone before any worker trains
    [summary] = cluster.run_points(jobs, client, files, "data", timeout=TIMEOUT)

    assert summary["status"] == "finished"
    assert set(client.run(lambda: os.environ.get("MAINRUN_DATA")).values()) == {worker_env["MAINRUN_DATA"]}
    cached = Path(worker_env["MAINRUN_CACHE"]) / "data" / STANDIN_SHA256 / "titles-copy.parquet"
    assert cached.exists() and file_sha256(cached) == STANDIN_SHA256
    # the records name the data as a run on the driver would: the driver's config, file name and sha256
    meta = ledger.read_json(ledger.find_run(tmp_path / "results", summary["hash"]) / "config.json")
    assert meta["config"]["data"] == ""
    assert meta["data_source"] == {"kind": "file", "name": "titles-copy.parquet", "sha256": STANDIN_SHA256}
    assert summary["data_source"] == meta["data_source"]


def test_data_is_checked_on_arrival(tmp_path, monkeypatch):
    monkeypatch.setenv("MAINRUN_CACHE", str(tmp_path / "cache"))
    good = cluster.DataFile("t.parquet", "0" * 64, b"not the bytes that hash")
    with pytest.raises(RuntimeError, match="sha256"):
        cluster.store_data(good)
    ok = cluster.DataFile.read(STANDIN)
    assert cluster.store_data(ok) == cluster.cached_data(ok.sha256, ok.name)


def test_median_thresholds_apply_optuna_median_pruner_rule():
    study = optuna.create_study(direction="minimize")
    for curve in ({1: 5.0, 10: 3.0, 20: 2.0}, {1: 5.2, 10: 2.6, 20: 1.9}, {1: 4.8, 10: 3.4, 20: 2.4}):
        study.add_trial(optuna.trial.create_trial(value=min(curve.values()), intermediate_values=curve))
    thresholds = search.median_thresholds(study, startup=2, warmup_steps=2)
    assert thresholds == {10: 3.0, 20: 2.0}
    assert search.median_thresholds(study, startup=5, warmup_steps=2) == {}     # too few completed trials
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    for curve in ([(1, 9.0), (10, 2.9), (20, 2.1)], [(1, 4.0), (10, 3.1)], [(1, 5.0), (10, 2.0), (20, 1.0)],
                  [(1, 5.0), (10, 2.9), (20, 1.95), (30, 1.9)]):
        ours = train.pruner(thresholds)
        trial = study.ask()
        for step, loss in curve:
            trial.report(loss, step)
            mine = ours(step, loss)
            assert mine == pruner.prune(study, study.get_trials(deepcopy=False)[trial.number]), (curve, step)
            if mine:
                break
        study.tell(trial, state=optuna.trial.TrialState.FAIL)     # leaves the completed set as it was


def test_search_spec_is_checked():
    with pytest.raises(ValueError, match="unknown search key"):
        search.parse({"search": {"space": {"lr": {"uniform": [0, 1]}}, "trials": 2, "budget": 3}})
    with pytest.raises(ValueError, match="low < high"):
        search.parse({"search": {"space": {"lr": {"log_uniform": [3e-3, 1e-4]}}, "trials": 2}})
    with pytest.raises(ValueError, match="not one of"):
        search.parse({"search": {"space": {"lr": {"normal": [0, 1]}}, "trials": 2}})
    s = search.parse({"search": {"space": {"w": {"choice": [{"d_model": 32, "n_head": 2}, {"d_model": 48}]}},
                                 "trials": 2}})
    assert search.overrides_of({"w": '{"d_model": 48}'}, s.space) == {"d_model": 48}


def test_gpu_packing_path_runs_on_cpu(tmp_path):
    """The GPU packing benchmark's code path (K worker processes per GPU holding GPU=1/K, tasks asking for
    it), with smoke runs on the CPU standing in for the device."""
    r = bench.gpu_packing(ks=(1, 2), n_runs=2, profile="smoke", preset="baseline", device="cpu",
                            precision="fp32", gpus=1, overrides={"batch_size": 32}, out_dir=tmp_path,
                            name="packing-test")
    one, two = r["levels"]
    assert (one["workers"], one["runs_per_gpu"], two["workers"], two["runs_per_gpu"]) == (1, 1, 2, 2)
    assert [lv["statuses"] for lv in (one, two)] == [["finished", "finished"]] * 2 and two["runs_per_hour"] > 0
    # two runs sharing a GPU train as one alone does: k2 against k1, the first level (compare_losses' reference)
    assert r["losses"]["reference"] == "k1" and r["losses"]["levels"]["k2"]["max_abs_diff_vs_reference"] == 0.0
    assert json.loads((tmp_path / "packing-test.json").read_text())["kind"] == "gpu"
    assert "k2" in bench.format_packing(r)


def test_packing_losses_are_compared_with_the_seed_spread():
    k1 = {"tag": "k1", "final_val_loss": [1.50, 1.52, 1.54]}
    k4 = {"tag": "k4", "final_val_loss": [1.50, 1.53, None]}
    out = bench.compare_losses([k1, k4])
    assert out["seed_std_reference"] == pytest.approx(0.02)
    assert out["levels"]["k4"]["max_abs_diff_vs_reference"] == pytest.approx(0.01)
    assert out["levels"]["k4"]["within_seed_spread"] is True


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: the GPU packing benchmark (K runs per GPU) needs one; its code "
                           "path runs on the CPU in test_gpu_packing_path_runs_on_cpu")
def test_gpu_packing_on_cuda(tmp_path):
    r = bench.gpu_packing(ks=(1, 2), n_runs=2, profile="smoke", preset="baseline", device="cuda",
                            precision="bf16", out_dir=tmp_path, name="packing-cuda-test")
    assert all(lv["statuses"] == ["finished", "finished"] for lv in r["levels"])


def test_archive_brings_back_finished_runs_and_their_studies_only(tmp_path):
    """ledger.archive: how a device call packs what it trained (scripts/device_call.py)."""
    import tarfile
    from mainrun import ledger
    root = tmp_path / "results"
    for name, done in (("full-gpu14_a", True), ("full-gpu14_b", False), ("full-final", True)):
        d = root / "runs" / name
        d.mkdir(parents=True)
        (d / "log.jsonl").write_text("{}\n")
        (d / ".lock").write_text("")
        if done:
            (d / "summary.json").write_text("{}")
    (root / "studies" / "full").mkdir(parents=True)
    for s in ("gpu14_screen.json", "04_final.json"):
        (root / "studies" / "full" / s).write_text("{}")
    (root / "bench").mkdir()
    (root / "bench" / "cuda-final.json").write_text("{}")
    tar = tmp_path / "out.tar.gz"
    rel = ledger.archive(root, tar, "full-gpu14_*", "full/gpu14_*.json", ("bench/cuda-*",))
    assert rel == ["runs/full-gpu14_a", "studies/full/gpu14_screen.json", "bench/cuda-final.json"]
    with tarfile.open(tar) as t:
        names = set(t.getnames())
    assert "runs/full-gpu14_a/summary.json" in names and "runs/full-gpu14_a/log.jsonl" in names
    assert not any(n.endswith(".lock") or "gpu14_b" in n or "full-final" in n or "04_final" in n for n in names)
    assert ledger.archive(root, tmp_path / "none.tar.gz", "nothing-*") == [] and not (tmp_path / "none.tar.gz").exists()
