"""A study means the same computation on every host: under the committed ledger, the notebooks' studies
find every run they ask for, whatever the host probe says (an AVX2-only CPU, a CPU with native bf16, a
CUDA machine), so they train nothing and rewrite no study record; and the analysis the report reads
comes out of the committed ledger as committed.

The host is faked at the two probes the code consults: `host.native_bf16` (which `precision=auto`
follows) and `torch.cuda.is_available` (which `device=auto` follows). Training is made impossible
(`train.Trainer` raises), so a study that asks for a run the ledger lacks fails the test by name; under
`full` the notebooks only read the ledger (train=None), so every point they ask for is recorded and one the
ledger lacks, other than the full-scale points never trained, fails the test too."""
import filecmp
import json
import shutil
from pathlib import Path

import matplotlib
import pytest
import torch

from conftest import ROOT, have_standin

matplotlib.use("Agg")
pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline corpus (../shared/data)")

HOSTS = {
    "avx2": dict(bf16=False, cuda=False),
    "native-bf16": dict(bf16=True, cuda=False),
    "cuda": dict(bf16=True, cuda=True),
}


def fake_host(monkeypatch, bf16: bool, cuda: bool) -> None:
    import mainrun.host
    import mainrun.train
    probe = lambda device="cpu": bf16 or device == "cuda"
    monkeypatch.setattr(mainrun.host, "native_bf16", probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)

    class NoTraining:
        def __init__(self, cfg, *a, **k):
            raise AssertionError(f"the study asked for a run the committed ledger does not hold: {cfg.run_name} "
                                 f"(device={cfg.device}, precision={cfg.precision})")
    monkeypatch.setattr(mainrun.train, "Trainer", NoTraining)


def code_cells(name: str) -> list[str]:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def run_notebook(name: str, **params) -> None:
    """Every code cell of a notebook in order, with papermill's parameters applied after the first cell."""
    cells = code_cells(name)
    ns: dict = {}
    exec(compile(cells[0], f"{name}[parameters]", "exec"), ns)
    ns.update(params)
    for i, src in enumerate(cells[1:], 1):
        exec(compile(src, f"{name}[{i}]", "exec"), ns)
    import matplotlib.pyplot as plt
    plt.close("all")


@pytest.fixture
def committed_ledger(tmp_path, monkeypatch):
    """A copy of the committed results/ as this test's ledger."""
    return copy_committed(tmp_path, monkeypatch)


def copy_committed(tmp: Path, env: pytest.MonkeyPatch) -> Path:
    root = tmp / "committed"
    shutil.copytree(ROOT / "results", root, ignore=shutil.ignore_patterns("notebooks", "jupyterlab", "*.pdf"))
    env.setenv("MAINRUN_RESULTS", str(root))
    env.chdir(ROOT / "notebooks")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for sub in ("studies", "runs") for p in sorted((root / sub).rglob("*")) if p.is_file()}


def record_points(env: pytest.MonkeyPatch) -> list[tuple]:
    """Every point the notebooks ask for, as (profile, study, label, seed, hash, status): each study call
    (`sweep.run_sweep`, which `confirm` and the search go through) and notebook 01's `mainrun.run`. Under
    full a point the ledger lacks comes back "missing" and is only printed; this list is what traps it."""
    import mainrun
    import mainrun.sweep
    seen: list[tuple] = []
    run_sweep, run = mainrun.sweep.run_sweep, mainrun.run

    def recording_sweep(spec, profile, study, *a, **k):
        df = run_sweep(spec, profile, study, *a, **k)
        seen.extend((profile, study, r.label, r.seed, r.hash, r.status) for r in df.itertuples())
        return df

    def recording_run(cfg, *a, **k):
        summary = run(cfg, *a, **k)
        seen.append((cfg.profile, "01_baseline", "baseline", cfg.rng_seed, summary["hash"], summary["status"]))
        return summary

    env.setattr(mainrun.sweep, "run_sweep", recording_sweep)
    env.setattr(mainrun, "run", recording_run)
    return seen


# Full-scale CPU points the seed plan never trained (hours each on 2 CPU cores; the ladder went from the
# baseline to `final` on the proxy and on a lent GPU, see notebooks 02-04): under `full` with train=None
# these, and only these, come back missing. Any other point missing means the host changed its hash.
NEVER_TRAINED = {("02_optimizer", "epic1"), ("03_confirm", "epic1"), ("03_confirm", "kept"),
                 ("04_confirm", "epic2"), ("04_confirm", "kept"), ("04_beyond_confirm", "epic3"),
                 ("04_beyond_confirm", "kept")}


@pytest.fixture(scope="module")
def studies_on_hosts(tmp_path_factory, shared_cache) -> dict[str, dict]:
    """The four notebooks under `full` with train=None on each faked host, each over its own copy of the
    committed ledger: the points they asked for, and the ledger's study and run files before and after
    (or the error that stopped them)."""
    from conftest import isolated_module
    out = {}
    for host, probes in HOSTS.items():
        with isolated_module(tmp_path_factory, shared_cache, f"host-{host}") as tmp, \
                pytest.MonkeyPatch.context() as env:
            root = copy_committed(tmp, env)
            fake_host(env, **probes)
            points = record_points(env)
            before, error = snapshot(root), None
            try:
                for nb in ("01_baseline", "02_optimizer", "03_architecture", "04_sweeps"):
                    run_notebook(nb, profile="full", train=None)
            except Exception as e:          # reported by the test of this host
                error = e
            out[host] = dict(points=points, before=before, after=snapshot(root), error=error)
    return out


@pytest.mark.parametrize("host", list(HOSTS))
def test_studies_train_and_write_nothing_on_any_host(host, studies_on_hosts):
    seen = studies_on_hosts[host]
    if seen["error"] is not None:
        raise seen["error"]
    before, after = seen["before"], seen["after"]
    assert sorted(after) == sorted(before), "files appeared or vanished under results/"
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"rewritten under results/: {changed[:10]}"


@pytest.mark.parametrize("host", list(HOSTS))
def test_every_study_point_is_found_on_any_host(host, studies_on_hosts):
    """Under full the notebooks only read the ledger, and a point it lacks is printed, not raised: every
    point must come back finished (or another end the ledger records), save the full-scale points never
    trained, and each host must ask for the same runs (hashes) as the others."""
    from mainrun.ledger import TERMINAL
    points = studies_on_hosts[host]["points"]
    assert studies_on_hosts[host]["error"] is None and len(points) > 50
    unfinished = sorted({p[1:3] + p[4:] for p in points if p[5] not in TERMINAL})
    assert {p[:2] for p in unfinished} == NEVER_TRAINED, (
        f"on the {host} host these points came back unfinished from the committed ledger (a host that shifts "
        f"a run's hash makes it missing): {[p for p in unfinished if p[:2] not in NEVER_TRAINED]}; "
        f"never trained but found: {sorted(NEVER_TRAINED - {p[:2] for p in unfinished})}")
    for other, seen in studies_on_hosts.items():
        if seen["error"] is None:
            assert points == seen["points"], f"the {host} and {other} hosts ask for different runs"


# The ledger's loss fields: a run's summary.json and the events of its log.jsonl.
LOSS_FIELDS = ("final_val_loss", "best_val_loss", "full_val_loss", "full_val_bpc", "loss", "full_loss", "full_bpc")


def perturb_losses(root: Path, rel: float) -> int:
    """Multiply every loss in the ledger under `root` by (1 + rel), as another host's arithmetic would
    shift it; returns how many values changed."""
    n = 0

    def bump(rec: dict) -> dict:
        nonlocal n
        for k in LOSS_FIELDS:
            if isinstance(rec.get(k), float):
                rec[k] *= 1 + rel
                n += 1
        return rec

    for run in (root / "runs").iterdir():
        if (s := run / "summary.json").exists():
            s.write_text(json.dumps(bump(json.loads(s.read_text())), indent=2, sort_keys=True) + "\n")
        if (log := run / "log.jsonl").exists():
            log.write_text("".join(json.dumps(bump(json.loads(line))) + "\n"
                                   for line in log.read_text().splitlines() if line.strip()))
    return n


def regenerated_analysis(root: Path, monkeypatch, profile: str = "full") -> list[str]:
    """write_report_inputs over the ledger at `root` (on a faked bf16 host); returns the names of the
    text files (.md, .json) that differ from the committed analysis. Figures are not compared (matplotlib
    versions may differ)."""
    from mainrun import analysis
    fake_host(monkeypatch, bf16=True, cuda=False)
    out = root / "analysis" / profile
    shutil.rmtree(out)
    analysis.write_report_inputs(profile)
    ref = ROOT / "results" / "analysis" / profile
    texts = sorted(p.name for p in ref.iterdir() if p.suffix in (".md", ".json", ".yml"))
    assert texts and "numbers.json" in texts
    assert str(ROOT) not in "".join((out / t).read_text() for t in texts)
    match, mismatch, errors = filecmp.cmpfiles(ref, out, texts, shallow=False)
    return mismatch + errors


def test_the_committed_analysis_is_what_the_ledger_gives(committed_ledger, monkeypatch):
    """The committed numbers and tables, byte for byte, from the committed ledger."""
    assert regenerated_analysis(committed_ledger, monkeypatch) == []


def test_the_committed_quick_analysis_is_what_the_quick_ledger_gives(committed_ledger, monkeypatch):
    """The proxy profile's committed analysis too (`make run PROFILE=quick` writes it): no stale file."""
    assert regenerated_analysis(committed_ledger, monkeypatch, "quick") == []


@pytest.mark.parametrize("profile", ["full", "quick"])
def test_the_analysis_carries_no_host_noise(profile, committed_ledger, monkeypatch):
    """Every loss shifted by one part in 10^12 (more than two hosts' arithmetic ever differs by): the
    analysis files come out byte for byte as committed, on any CPU."""
    assert perturb_losses(committed_ledger, 1e-12) > 10_000
    assert regenerated_analysis(committed_ledger, monkeypatch, profile) == []


def test_a_real_change_in_the_losses_shows(committed_ledger, monkeypatch):
    """The converse, so the rounding cannot hide results: a shift in the 4th digit changes the numbers."""
    perturb_losses(committed_ledger, 3e-4)
    differ = regenerated_analysis(committed_ledger, monkeypatch)
    assert "numbers.json" in differ and "results.md" in differ


def test_a_fresh_run_record_names_no_machine_path(tmp_path):
    """A run given its data by absolute path records the file's name and sha256, not where it lies."""
    import mainrun
    from conftest import STANDIN
    from mainrun import ledger
    data = STANDIN.resolve()
    summary = mainrun.run(mainrun.make_config("smoke", data=str(data), name="paths"), progress=False)
    run = ledger.find_run(ledger.results_root("smoke"), summary["hash"])
    for f in ("config.json", "summary.json", "log.jsonl"):
        text = (run / f).read_text()
        assert str(ROOT) not in text and str(data.parent) not in text, f
    rec = json.loads((run / "config.json").read_text())
    assert rec["data_source"]["name"] == data.name and len(rec["data_source"]["sha256"]) == 64
    assert "path" not in rec["data_source"]
