"""The engine's edges (issue 25): concurrent trainers, bounded waits, flags checked on the driver, damaged
summaries, one-line errors, emulated bf16, concurrent sweeps, file modes and printed paths.

Smoke profile, temporary ledgers and checkpoint folders (conftest.isolated); each test takes seconds.
"""
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mainrun
import mainrun.train as train_mod
from conftest import ROOT, have_standin
from mainrun import cli, host, ledger
from mainrun.config import make_config

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline HN corpus (MAINRUN_DATA)")

SMOKE = dict(batch_size=32)                       # 33 optimizer steps


def bounded(fn, seconds: float = 120.0):
    """fn() in a thread, failed (not hung) if it has not returned after `seconds`: (result, exception)."""
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"still waiting after {seconds:g} s: a wait without a bound")
    return out.get("result"), out.get("error")


def sweep_cli(args: list[str], capsys) -> tuple[int, str]:
    """`python -m mainrun sweep ...` in this process: (exit status, stderr)."""
    def call():
        try:
            return cli.main(["sweep", *args])
        except SystemExit as e:                   # argparse's usage errors
            return e.code
    rc, err = bounded(call)
    if err is not None:
        raise err
    return rc, capsys.readouterr().err


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base: {batch_size: 32}\npoints:\n  a: {}\n")
    return path


# ----------------------------------------------------------------------------- 1. one lock per run
def test_a_second_trainer_from_another_ledger_stops_and_names_the_holder(isolated):
    """Two ledgers, one checkpoint folder (two clones on one machine): the second `train` of the same config
    stops with the holder's pid and ledger while the first is in the middle of a checkpoint write, and the
    first finishes untouched (before: the second deleted the first's temp file, which then crashed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAINRUN_CHECKPOINTS": str(isolated / "shared-ckpt")}
    cmd = [sys.executable, "-m", "mainrun", "train", "--profile", "smoke", "--quiet", "--set",
           "checkpoint_every=10", "batch_size=32"]
    err_a = isolated / "a.err"
    with open(err_a, "w") as err:
        a = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                             env={**env, "MAINRUN_RESULTS": str(isolated / "a"), train_mod.WRITE_DELAY_ENV: "2"})
    t0 = time.time()
    while f"{train_mod.WRITE_DELAY_ENV}: " not in err_a.read_text():
        assert a.poll() is None and time.time() - t0 < 120, err_a.read_text()[-2000:]
        time.sleep(0.05)
    b = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**env, "MAINRUN_RESULTS": str(isolated / "b")})
    out, _ = a.communicate(timeout=120)
    assert a.returncode == 0, err_a.read_text()[-2000:]
    assert json.loads(out)["status"] == "finished"
    assert b.returncode == 2, b.stderr[-2000:]
    last = b.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the checkpoints of run") and f"being written by process {a.pid}" in last
    assert str((isolated / "a").resolve()) in last and "MAINRUN_CHECKPOINTS" in last
    assert not list((isolated / "shared-ckpt").rglob("*.tmp"))
    (h,) = [p.name for p in (isolated / "shared-ckpt").iterdir()]
    assert sorted(p.name for p in (isolated / "shared-ckpt" / h).iterdir()) == ["final.pt"]


def test_a_held_run_folder_is_waited_for_and_read_back(isolated):
    """wait=True (a sweep in this process): a run held by another process is waited for and then read from the
    ledger, not trained again; without wait it is refused naming the holder."""
    cfg = make_config("smoke", **SMOKE)
    first = mainrun.run(cfg, progress=False)
    (d,) = (isolated / "results" / "runs").iterdir()
    (d / "summary.json").unlink()
    log = (d / "log.jsonl").read_text()
    (d / "log.jsonl").write_text(log.split('{"event": "full_coverage"')[0])    # as if still training
    holder = ledger.Lock(d / ".lock", ledger.lock_record("training", d)).acquire()
    with pytest.raises(RuntimeError, match=f"being trained by process {os.getpid()}"):
        mainrun.run(cfg, progress=False)

    def finish_it():
        time.sleep(1.0)
        (d / "log.jsonl").write_text(log)
        ledger.atomic_write_json(d / "summary.json", first)
        holder.release()
    threading.Thread(target=finish_it).start()
    trained = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_mod, "Trainer", lambda *a, **k: trained.append(1))
        got, err = bounded(lambda: mainrun.run(cfg, progress=False, wait=True))
    assert err is None and got == first and not trained


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """A LocalCluster of 2 worker processes sharing one checkpoint folder, as on one machine."""
    pytest.importorskip("distributed")
    from distributed import Client

    from mainrun import cluster
    d = tmp_path_factory.mktemp("edge-workers")
    env = {"MAINRUN_DATA": str(d / "no-such-titles.parquet"), "MAINRUN_CACHE": str(d / "cache"),
           "MAINRUN_CHECKPOINTS": str(d / "ckpt"), "OMP_NUM_THREADS": "1"}
    with cluster.local_cluster(2, env=env, silence_logs=logging.CRITICAL) as lc, Client(lc) as c:
        c.wait_for_workers(2, timeout=60)
        yield c, d / "ckpt"


def _jobs(spec: dict, study: str):
    from mainrun import sweep
    return [train_mod.resolve_job(cfg, label=p.label) for p, cfg in sweep.build_configs(spec, "smoke", study)]


def test_two_workers_training_one_config_take_turns_with_its_checkpoints(isolated, workers):
    """Two tasks of one config on two workers of one machine (two drivers' sweeps, two ledgers): the second
    waits for the first's checkpoint folder instead of deleting its temp files; both finish, no retry used
    (retries=0: before, one crashed on its vanished temp file)."""
    from mainrun import cluster
    client, ckpt = workers
    [job] = _jobs({"base": {**SMOKE, "checkpoint_every": 15}, "points": {"w": {"lr": 4e-3}}}, "ck")
    engine = cluster.Engine(client, cluster.data_files([job]), retries=0)
    delay = train_mod.WRITE_DELAY_ENV
    client.run(lambda: os.environ.__setitem__(delay, "2"))    # in each worker process (a lambda goes by value)
    try:
        futures = [engine.submit(job)]
        t0 = time.time()
        while not list((ckpt / job.hash).glob("*.tmp")):     # the first is in the middle of a checkpoint write
            assert time.time() - t0 < 120 and not futures[0].done(), futures[0]
            time.sleep(0.05)
        futures.append(engine.submit(job))                    # the second starts on the other worker
        results, err = bounded(lambda: client.gather(futures), 180)
    finally:
        client.run(lambda: os.environ.pop(delay, None))
    assert err is None, err
    summaries = [json.loads(r["files"]["summary.json"]) for r in results]
    assert [s["status"] for s in summaries] == ["finished", "finished"] and {r["pid"] for r in results} != {None}
    assert summaries[0]["final_val_loss"] == summaries[1]["final_val_loss"]
    assert sorted(p.name for p in (ckpt / job.hash).iterdir()) == ["final.pt"]


def test_concurrent_sweeps_of_one_spec_train_each_point_once(isolated, workers):
    """Two drivers run the same sweep into one ledger on one cluster at once: every point is trained once;
    the driver that did not send it waits for it and reads it from the ledger (before: each trained all)."""
    from mainrun import cluster
    client, _ = workers
    marks = isolated / "marks"
    marks.mkdir()

    def mark(cfg, step):                        # on the worker: one file per run started
        if step == 1:
            (marks / f"{cfg.run_name}-{os.getpid()}-{time.time_ns()}").write_text("")
    spec = {"base": SMOKE, "points": {"p": {"lr": 5e-3}, "q": {"lr": 7e-3}}}
    jobs = _jobs(spec, "twice")
    data = cluster.data_files(jobs)
    runs = {}

    def driver(name):
        runs[name] = cluster.run_points(_jobs(spec, "twice"), client, data, "twice", timeout=180, on_step=mark)
    first = threading.Thread(target=driver, args=("first",))
    first.start()
    time.sleep(0.2)
    _, err = bounded(lambda: driver("second"), 180)
    first.join(180)
    assert err is None, err
    assert sorted(p.name.rsplit("-", 2)[0] for p in marks.iterdir()) == sorted(j.cfg.run_name for j in jobs)
    assert [s["final_val_loss"] for s in runs["first"]] == [s["final_val_loss"] for s in runs["second"]]
    assert len(list((isolated / "results" / "runs").iterdir())) == 2


# ----------------------------------------------------------------------------- 2, 3, 5. the sweep CLI
def test_unreachable_scheduler_is_a_short_error_within_the_timeout(isolated, spec_file, capsys):
    t0 = time.time()
    rc, err = sweep_cli([str(spec_file), "--profile", "smoke", "--study", "s", "--scheduler", "tcp://127.0.0.1:9",
                         "--scheduler-timeout", "2", "--quiet"], capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "tcp://127.0.0.1:9" in err and "did not answer within 2 s" in err and "dask scheduler" in err
    assert time.time() - t0 < 60


def test_a_scheduler_without_workers_is_a_short_error_after_the_timeout(isolated, spec_file, capsys):
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None, silence_logs=logging.CRITICAL) as lc:
        rc, err = sweep_cli([str(spec_file), "--profile", "smoke", "--study", "s", "--scheduler",
                             lc.scheduler_address, "--scheduler-timeout", "2", "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the Dask scheduler at {lc.scheduler_address} has no workers after 2 s" in err and "dask worker" in err
    assert not (isolated / "results" / "runs").exists()


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--workers", "-2"), ("--runs-per-gpu", "0"),
                                         ("--runs-per-gpu", "-1"), ("--threads-per-run", "-1"),
                                         ("--threads-per-run", "0")])
def test_engine_flags_are_checked_before_anything_starts(isolated, spec_file, capsys, flag, value):
    rc, err = sweep_cli([str(spec_file), "--profile", "smoke", "--study", "s", flag, value, "--quiet"], capsys)
    assert rc == 2 and f"argument {flag}: '{value}' is not accepted: give an integer >= 1" in err, err
    assert not (isolated / "results").exists()                                # nothing trained or recorded


def test_engine_arguments_are_checked_in_the_api(isolated):
    from mainrun import sweep
    spec = {"base": SMOKE, "points": {"a": {}}}
    for kwargs, name in (({"cluster": 0}, "cluster=0"), ({"cluster": -2}, "cluster=-2"),
                         ({"runs_per_gpu": -1}, "runs_per_gpu=-1"), ({"threads_per_run": 0}, "threads_per_run=0")):
        with pytest.raises(ValueError, match=name):
            sweep.run_sweep(spec, "smoke", "s", progress=False, **kwargs)
    assert not (isolated / "results").exists()


def test_spec_file_errors_are_one_line(isolated, tmp_path, capsys):
    rc, err = sweep_cli([str(tmp_path / "nope.yaml"), "--profile", "smoke", "--study", "s"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"spec file {tmp_path / 'nope.yaml'}: No such file or directory" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {batch_size: 32}\npoints:\n  a: {lr: 1e-3\n  b: [}\n")
    rc, err = sweep_cli([str(bad), "--profile", "smoke", "--study", "s"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "<unicode string>" not in err, err
    assert f"spec file {bad} line 4, column" in err and "not valid YAML" in err and "expected a YAML" in err
    bad.write_text("- just\n- a list\n")
    rc, err = sweep_cli([str(bad), "--profile", "smoke", "--study", "s"], capsys)
    assert rc == 2 and "holds a list; expected a YAML or JSON mapping" in err


# ----------------------------------------------------------------------------- 4. damaged summaries
def test_a_damaged_summary_is_named_repaired_and_never_retrained(isolated, capsys, monkeypatch):
    cfg = make_config("smoke", **SMOKE)
    good = mainrun.run(cfg, progress=False)
    (d,) = (isolated / "results" / "runs").iterdir()
    text = (d / "summary.json").read_text()
    (d / "summary.json").write_text(text[: len(text) // 2])                      # truncated

    assert cli.main(["list", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert f"{d.name}" in out and "damaged" in out and f"python -m mainrun repair {d.name}" in out

    class NoTraining:
        def __init__(self, *a, **k):
            raise AssertionError("trained again")
    monkeypatch.setattr(train_mod, "Trainer", NoTraining)
    with pytest.raises(ledger.DamagedRun, match=r"summary.json is damaged .*shows it finished.*repair"):
        mainrun.run(cfg, progress=False)
    with pytest.raises(ledger.DamagedRun, match="--force would discard it.*--discard-finished"):
        mainrun.run(cfg, force=True, progress=False)
    assert cli.main(["train", "--profile", "smoke", "--quiet", "--force", "--set", "batch_size=32"]) == 2
    assert "--discard-finished" in capsys.readouterr().err

    assert cli.main(["repair", d.name]) == 0
    assert "rebuilt" in capsys.readouterr().out
    repaired = json.loads((d / "summary.json").read_text())
    for k in ledger.CHECKED:
        assert repaired.get(k) == good.get(k), k
    assert (d / "summary.json.damaged").read_text() == text[: len(text) // 2]
    assert mainrun.run(cfg, progress=False) == repaired                         # read back, not trained
    assert cli.main(["repair", d.name]) == 0 and "agrees with its log" in capsys.readouterr().out

    (d / "summary.json").unlink()                                               # lost altogether
    with pytest.raises(ledger.DamagedRun, match="summary.json is missing, but the run's log.jsonl shows it"):
        mainrun.run(cfg, progress=False)
    lie = text.replace(f'"final_val_loss": {good["final_val_loss"]!r}', '"final_val_loss": 1.0')
    (d / "summary.json").write_text(lie[: lie.index('"final_val_loss"') + 40])   # legible, and wrong
    with pytest.raises(ledger.DamagedRun, match="disagrees with the log"):
        ledger.rebuild_summary(d, (d / "summary.json").read_text())
    monkeypatch.undo()
    assert mainrun.run(cfg, force=True, discard_finished=True, progress=False)["final_val_loss"] == good["final_val_loss"]


def test_repair_refuses_a_log_that_did_not_finish(isolated):
    cfg = make_config("smoke", **SMOKE)
    mainrun.run(cfg, progress=False)
    (d,) = (isolated / "results" / "runs").iterdir()
    lines = (d / "log.jsonl").read_text().splitlines(keepends=True)
    (d / "log.jsonl").write_text("".join(lines[: len(lines) // 2]))
    (d / "summary.json").write_text("{")
    with pytest.raises(ledger.DamagedRun, match="does not show that the run ended"):
        ledger.rebuild_summary(d)
    with pytest.raises(ledger.DamagedRun, match="does not show that it ended, so nothing is lost"):
        mainrun.run(cfg, progress=False)
    assert mainrun.run(cfg, force=True, progress=False)["status"] == "finished"   # nothing finished to lose


# ----------------------------------------------------------------------------- 6. emulated bf16
def test_bf16_on_a_cpu_without_native_bf16_warns_once(isolated, monkeypatch, capsys):
    monkeypatch.setattr(host, "native_bf16", lambda device: False)
    host.warn_emulated_bf16.cache_clear()               # it warns once per process

    class Stop(Exception):
        pass

    def no_training(*a, **k):
        raise Stop()
    monkeypatch.setattr(train_mod, "Trainer", no_training)
    for _ in range(2):
        with pytest.raises(Stop):
            mainrun.run(make_config("smoke", precision="bf16", device="cpu", **SMOKE), progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: precision=bf16 on a CPU without native bf16") == 1
    assert "slower than fp32 here (a 256x256 matmul timed just now" in err and "use precision=fp32" in err
    with pytest.raises(Stop):
        mainrun.run(make_config("smoke", **SMOKE), progress=False)             # fp32: no warning
    assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- 8. minor
def test_run_files_are_world_readable_like_installed_ones(isolated):
    old = os.umask(0o022)
    try:
        s = mainrun.run(make_config("smoke", **SMOKE), progress=False)
    finally:
        os.umask(old)
    (d,) = (isolated / "results" / "runs").iterdir()
    for p in [d / "config.json", d / "log.jsonl", d / "summary.json", isolated / "ckpt" / s["hash"] / "final.pt"]:
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_paths_in_messages_are_shown_in_full(isolated, spec_file, capsys):
    with pytest.raises(SystemExit) as e:
        cli._find_run_dir("zzzz-nothing")
    assert f"in {(isolated / 'results').resolve()}" in str(e.value)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc, _ = sweep_cli([str(spec_file), "--profile", "smoke", "--study", "a1", "--quiet"], capsys)
    assert rc == 0
    assert f"study record: {(isolated / 'results' / 'studies' / 'smoke' / 'a1.json').resolve()}" in out.getvalue()
    assert ledger.shown_path(ROOT / "results" / "x.json") == "results/x.json"


# ============================================================================= issue 32: nothing lost, nothing
# silently wrong; user errors and environment faults end with one line and status 2
def cli_err(args: list[str], capsys) -> tuple[int, str]:
    """`python -m mainrun ARGS` in this process: (exit status, stderr); a traceback fails the test."""
    try:
        rc = cli.main(args)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("{")]   # train prints its config
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def smoke_env(isolated, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


# ----------------------------------------------------------------------------- 5. full disk, read-only ledger
def test_a_full_disk_is_one_line_naming_the_file(isolated):
    """A real write failure (a file-size limit, as a full disk fails a write): one line naming the file, status 2,
    no temp file left (before: torch's "unexpected pos" or an OSError traceback without a path)."""
    import resource
    import signal
    train_mod.prepare(make_config("smoke", **SMOKE))           # the data cache is written before the limit

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)         # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    r = subprocess.run([sys.executable, "-m", "mainrun", "train", "--profile", "smoke", "--quiet", "--set",
                        "batch_size=32", "checkpoint_every=10"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=smoke_env(isolated), preexec_fn=small_files)
    assert r.returncode == 2, r.stderr[-2000:]
    line = one_error_line(r.stderr)
    assert f"{isolated / 'ckpt'}/" in line and "ckpt.pt: File too large" in line, line
    assert not [p for p in isolated.rglob("*.tmp")]


def test_a_read_only_ledger_is_one_line_naming_the_path(isolated, capsys, monkeypatch):
    mainrun.run(make_config("smoke", **SMOKE), progress=False)
    (d,) = (isolated / "results" / "runs").iterdir()
    (d / "summary.json").write_text("{")
    results = str(isolated / "results")
    real_open, real_mkdir = os.open, os.mkdir

    def writable(path) -> None:                          # what a read-only bind mount of the ledger answers
        if str(path).startswith(results):
            raise OSError(30, os.strerror(30), str(path))

    def open_(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writable(path)
        return real_open(path, flags, *a, **k)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: writable(path) or real_mkdir(path, *a, **k))
    rc, err = cli_err(["repair", d.name], capsys)
    assert rc == 2 and f"{d}/.lock: Read-only file system; point MAINRUN_RESULTS" in one_error_line(err)
    rc, err = cli_err(["train", "--profile", "smoke", "--quiet", "--set", "batch_size=32", "lr=0.01"], capsys)
    assert rc == 2 and f"{results}/runs/smoke-baseline-" in one_error_line(err) and "Read-only file system" in err
    with pytest.raises(OSError):                         # --debug: the traceback, for a bug report
        cli.main(["repair", d.name, "--debug"])


# ----------------------------------------------------------------------------- 9. Ctrl-C
def test_ctrl_c_is_one_line_and_releases_the_locks(isolated):
    """SIGINT in the middle of a checkpoint write: no traceback, status 130, both locks released and no temp
    file left; the run resumes to the end."""
    import signal
    err_path = isolated / "err"
    with open(err_path, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "mainrun", "train", "--profile", "smoke", "--quiet", "--set",
                              "batch_size=32", "checkpoint_every=10"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=err, env=smoke_env(isolated, **{train_mod.WRITE_DELAY_ENV: "5"}))
    t0 = time.time()
    while f"{train_mod.WRITE_DELAY_ENV}: " not in err_path.read_text():
        assert p.poll() is None and time.time() - t0 < 120, err_path.read_text()[-2000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    assert p.wait(60) == 130
    lines = [ln for ln in err_path.read_text().splitlines() if not ln.startswith(("{", train_mod.WRITE_DELAY_ENV))]
    assert lines == ["interrupted: nothing half-written is kept; a run resumes from its last checkpoint when "
                     "started again"], lines
    assert not list(isolated.rglob(".lock")) and not list(isolated.rglob("*.tmp"))
    assert mainrun.run(make_config("smoke", checkpoint_every=10, **SMOKE), progress=False)["status"] == "finished"


# ----------------------------------------------------------------------------- 1. export --out deletes nothing
def test_export_out_never_deletes_what_it_did_not_write(isolated, capsys):
    from mainrun import export
    d = isolated / "checkout"
    (d / ".git").mkdir(parents=True)
    (d / "notes.txt").write_text("wip\n")
    rc, err = cli_err(["export", "final", "--out", str(d), "--no-report"], capsys)
    assert rc == 2 and f"--out {d} holds files that export did not write" in one_error_line(err)
    assert (d / "notes.txt").read_text() == "wip\n" and (d / ".git").is_dir()
    (isolated / "file").write_text("x")
    rc, err = cli_err(["export", "final", "--out", str(isolated / "file")], capsys)
    assert rc == 2 and "is a file" in one_error_line(err) and (isolated / "file").read_text() == "x"

    empty = isolated / "empty"
    empty.mkdir()
    tree = export.export_out("final", empty, report=False)               # an empty folder is written into
    assert (tree / export.MARKER).is_file() and (tree / "mainrun" / "train.py").is_file()
    (tree / "mainrun" / "logs").mkdir()                                   # what `task train` leaves there
    (tree / "mainrun" / "logs" / "mainrun.log").write_text("a run\n")
    export.export_out("final", tree, report=True)                         # one export wrote: written again
    assert (tree / "mainrun" / "logs" / "mainrun.log").read_text() == "a run\n"
    assert (tree / "mainrun" / "report.pdf").is_file()
    export.export_out("final", tree, report=False)                       # what it wrote before and not now goes
    assert not (tree / "mainrun" / "report.pdf").exists() and (tree / "mainrun" / "logs" / "mainrun.log").exists()
    assert not [p for p in isolated.iterdir() if p.name.endswith((".tmp", ".old"))]


# ----------------------------------------------------------------------------- 3. export --into, a changed evaluate()
def test_export_into_refuses_a_changed_evaluate_unless_told(isolated, capsys, monkeypatch):
    from test_export import STANDIN_TRAIN, standin_checkout

    from mainrun import export
    # the stand-in's evaluate() plays the original's; comments and layout do not change it
    original = export.evaluate_fingerprint(export.evaluate_source(STANDIN_TRAIN))
    monkeypatch.setattr(export, "ORIGINAL_EVALUATE", original)
    relaid = STANDIN_TRAIN.replace("total = 0.0", "total = 0.0   # summed").replace("reduction='sum'", 'reduction="sum"')
    assert export.evaluate_source(relaid) != export.evaluate_source(STANDIN_TRAIN)
    assert cli_err(["export", "final", "--into", str(standin_checkout(isolated / "a", relaid))], capsys)[0] == 0
    assert "and it is the original's" in (isolated / "a" / "mainrun" / "SUBMISSION.md").read_text()

    cheat = standin_checkout(isolated / "b", STANDIN_TRAIN.replace("return total / len(val_text)", "return 0.0"))
    rc, err = cli_err(["export", "final", "--into", str(cheat)], capsys)
    assert rc == 2 and "its evaluate() is not the original's" in one_error_line(err) and "--changed-evaluate" in err
    assert not (cheat / "mainrun" / "SUBMISSION.md").exists()                  # nothing written
    assert "return 0.0" in (cheat / "mainrun" / "train.py").read_text()
    assert cli_err(["export", "final", "--into", str(cheat), "--changed-evaluate"], capsys)[0] == 0
    md = (cheat / "mainrun" / "SUBMISSION.md").read_text()
    assert "**`evaluate()` is not the original's.**" in md and "--changed-evaluate" in md
    # the template's own restatement is not the original's either: the fingerprint tells code apart
    assert export.evaluate_fingerprint(export.evaluate_source(export.TEMPLATE.read_text())) != export.ORIGINAL_EVALUATE


# ----------------------------------------------------------------------------- 2, 8. no result from no data
@pytest.fixture
def finished_run(isolated):
    mainrun.run(make_config("smoke", **SMOKE), progress=False)
    (d,) = (isolated / "results" / "runs").iterdir()
    return d


def test_eval_records_no_result_from_no_data(isolated, finished_run, tmp_path, capsys):
    import pandas as pd
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"title": pd.Series([], dtype=str)}).to_parquet(empty)
    rc, err = cli_err(["eval", finished_run.name, "--data", str(empty), "--save"], capsys)
    assert rc == 2 and f"{empty} holds no titles" in one_error_line(err) and "no loss is computed" in err
    rc, err = cli_err(["eval", finished_run.name, "--data", os.environ["MAINRUN_DATA"], "--num-titles", "-1"], capsys)
    assert rc == 2 and "argument --num-titles: '-1' is not accepted: give an integer >= 0" in err
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"title": ""}\n' * 5)                                 # titles, but no text to predict
    rc, err = cli_err(["eval", finished_run.name, "--data", str(blank), "--save"], capsys)
    assert rc == 2 and "no loss is computed" in one_error_line(err)
    assert not (isolated / "results" / "test").exists()                     # nothing saved


def test_titles_that_are_not_text_are_one_line(isolated, finished_run, tmp_path, capsys):
    import pandas as pd
    numbers = tmp_path / "numbers.parquet"
    pd.DataFrame({"title": range(7000)}).to_parquet(numbers)
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"title": f"title {i}" if i != 3 else 12345}) + "\n" for i in range(7000)))
    for path, row in ((numbers, "0: 0"), (one, "3: 12345")):
        rc, err = cli_err(["eval", finished_run.name, "--data", str(path)], capsys)
        assert rc == 2 and f"{path}: the 'title' column holds a int at row {row}" in one_error_line(err), err
        rc, err = cli_err(["train", "--profile", "smoke", "--quiet", "--set", f"data={path}"], capsys)
        assert rc == 2 and "titles are text" in one_error_line(err)
    assert [p.name for p in (isolated / "results" / "runs").iterdir()] == [finished_run.name]


def test_too_little_data_leaves_no_run_folder(isolated, tmp_path, capsys):
    import pandas as pd
    few = tmp_path / "few.parquet"
    pd.DataFrame({"title": [f"a short title {i}" for i in range(6000)]}).to_parquet(few)
    rc, err = cli_err(["train", "--profile", "smoke", "--quiet", "--set", f"data={few}", "batch_size=512"], capsys)
    assert rc == 2 and "fewer than one optimizer step" in one_error_line(err)
    assert not list((isolated / "results").rglob("runs/*"))                 # `list` shows nothing incomplete
    assert cli_err(["list", "--profile", "smoke"], capsys)[0] == 0


def test_the_losing_trainer_of_a_lock_race_leaves_no_run_folder(isolated):
    cfg = make_config("smoke", **SMOKE)
    h = mainrun.run(cfg, train=False)["hash"]
    holder = ledger.Lock(isolated / "ckpt" / h / ".lock", ledger.lock_record("training", isolated / "other")).acquire()
    try:
        with pytest.raises(RuntimeError, match="being written by"):
            mainrun.run(cfg, progress=False)
    finally:
        holder.release()
    assert not (isolated / "results" / "runs").exists() or not list((isolated / "results" / "runs").iterdir())


# ----------------------------------------------------------------------------- 4. damaged checkpoint and weights
@pytest.mark.parametrize("damage", ["half", "empty", "random"])
def test_a_damaged_checkpoint_is_named_and_restarted_when_asked(isolated, capsys, damage):
    cfg = make_config("smoke", checkpoint_every=10, **SMOKE)

    def stop_at_15(step):
        if step == 15:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        mainrun.run(cfg, on_step=stop_at_15, progress=False)
    ck = isolated / "ckpt" / mainrun.run(cfg, train=False)["hash"] / "ckpt.pt"
    data = ck.read_bytes()
    ck.write_bytes({"half": data[: len(data) // 2], "empty": b"", "random": os.urandom(len(data))}[damage])
    args = ["train", "--profile", "smoke", "--quiet", "--set", "checkpoint_every=10", "batch_size=32"]
    rc, err = cli_err(args, capsys)
    assert rc == 2 and f"{ck} is damaged" in one_error_line(err) and "--restart" in err
    rc, err = cli_err([*args, "--restart"], capsys)
    assert rc == 0, err
    s = mainrun.run(cfg, progress=False)
    assert s["status"] == "finished" and s.get("resumes", 0) == 0          # from step 0, not from the damage


def test_damaged_final_weights_are_named_by_eval_and_list(isolated, finished_run, capsys):
    final = isolated / "ckpt" / json.loads((finished_run / "config.json").read_text())["hash"] / "final.pt"
    final.write_bytes(final.read_bytes()[:1000])
    rc, err = cli_err(["eval", finished_run.name, "--data", os.environ["MAINRUN_DATA"], "--num-titles", "600"], capsys)
    assert rc == 2 and f"{final} is damaged" in one_error_line(err) and "--force" in err
    assert cli.main(["list", "--profile", "smoke"]) == 0
    assert f"damaged: {final}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 6, 9. spec files of the wrong shape
@pytest.mark.parametrize("text, key", [("axes: {lr: 0.01}", "'axes' holds {'lr': 0.01}"),
                                       ("points: {a: 3}", "'points' holds {'a': 3}"),
                                       ("base: [1]\npoints: {a: {}}", "'base' holds [1]"),
                                       ("grid: {lr: 0.01}", "'grid' holds {'lr': 0.01}"),
                                       ("points: {a: {}}\nseeds: abc", "'seeds' holds 'abc'"),
                                       ("axes: {}", "has no points"),
                                       ("specs:\n  - points: {a: {}}\n  - axes: {lr: 1}", "(specs[1]): sweep spec "
                                                                                           "key 'axes'")])
def test_spec_files_of_the_wrong_shape_name_the_key(isolated, tmp_path, capsys, text, key):
    spec = tmp_path / "shape.yaml"
    spec.write_text(text + "\n")
    rc, err = sweep_cli([str(spec), "--profile", "smoke", "--study", "s", "--quiet"], capsys)
    assert rc == 2 and f"spec file {spec}" in one_error_line(err) and key in err, err
    assert not (isolated / "results").exists()                                # nothing run or recorded


def test_a_binary_spec_file_is_named(isolated, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    rc, err = sweep_cli([str(spec), "--profile", "smoke", "--study", "s"], capsys)
    assert rc == 2 and f"spec file {spec}: not text" in one_error_line(err)


# ----------------------------------------------------------------------------- 7, 9. not a Dask scheduler; no GPU
@pytest.mark.parametrize("answer", [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 20, None])
def test_an_address_that_is_not_a_dask_scheduler_ends_within_the_timeout(isolated, spec_file, capsys, answer):
    """A listener that answers HTTP, or accepts and says nothing: one line within --scheduler-timeout (before: a
    3.07 EiB MemoryError after 3 s, or a hang until killed)."""
    import socket
    server = socket.create_server(("127.0.0.1", 0))
    conns = []

    def serve():
        while True:
            try:
                c, _ = server.accept()
            except OSError:
                return
            conns.append(c)
            if answer:
                c.sendall(answer)
    threading.Thread(target=serve, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    t0 = time.time()
    try:
        rc, err = sweep_cli([str(spec_file), "--profile", "smoke", "--study", "s", "--scheduler", address,
                             "--scheduler-timeout", "3", "--quiet"], capsys)
    finally:
        server.close()
        for c in conns:
            c.close()
    assert rc == 2 and address in one_error_line(err) and time.time() - t0 < 10, err
    assert ("not as a Dask scheduler" if answer else "did not answer within 3 s") in err


def test_runs_per_gpu_without_a_gpu_says_so(monkeypatch, capsys):
    import torch

    from mainrun import cluster
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    made = {}
    monkeypatch.setattr("distributed.SpecCluster", lambda workers, **k: made.setdefault("workers", workers))
    cluster.local_cluster(1, runs_per_gpu=2)
    out = capsys.readouterr().out
    assert "no GPU on this machine: 2 worker processes share its CPU" in out and "GPU(s)" not in out
    assert len(made["workers"]) == 2
