"""Every round of research in records/ is data: each study spec there, read through the CLI
(`python -m mainrun sweep records/<round>/<study>.yaml`) against a copy of the committed ledger, finds
exactly the committed runs of its study (finished or pruned), trains nothing (`train.Trainer` raises), and
leaves every file under results/runs and results/studies as it was, byte for byte. The host is made to look
like a CPU machine, so the GPU rounds are read back where no GPU is."""
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, have_standin

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline corpus (../shared/data)")

SPECS = sorted((ROOT / "records").glob("*/*.yaml"))


@pytest.fixture(scope="module")
def ledger_copy(tmp_path_factory):
    """The committed runs and study records, copied once for the module."""
    root = tmp_path_factory.mktemp("committed")
    for sub in ("runs", "studies"):
        shutil.copytree(ROOT / "results" / sub, root / sub)
    return root


@pytest.fixture
def read_only(ledger_copy, monkeypatch):
    """The copied ledger as this test's results, on a host without CUDA, where training raises."""
    import mainrun.train

    class NoTraining:
        def __init__(self, cfg, *a, **k):
            raise AssertionError(f"the spec asked for a run the committed ledger does not hold: {cfg.run_name} "
                                 f"(device={cfg.device}, precision={cfg.precision})")

    monkeypatch.setenv("MAINRUN_RESULTS", str(ledger_copy))
    monkeypatch.setattr(mainrun.train, "Trainer", NoTraining)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return ledger_copy


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for sub in ("studies", "runs") for p in sorted((root / sub).rglob("*")) if p.is_file()}


def read_back(path: Path, monkeypatch) -> list:
    """Run the CLI on a spec; the frames run_sweep returned to it."""
    from mainrun import cli, sweep
    frames = []
    real = sweep.run_sweep

    def recording(*a, **k):
        frames.append(real(*a, **k))
        return frames[-1]
    monkeypatch.setattr(sweep, "run_sweep", recording)
    assert cli.main(["sweep", str(path), "--quiet"]) == 0
    return frames


def test_every_committed_study_has_one_record_spec():
    committed = {(p.parent.name, p.stem) for p in (ROOT / "results" / "studies").glob("*/*.json")
                 if p.stem != "ladder"}
    specs = [(yaml.safe_load(p.read_text()).get("profile"), p.stem) for p in SPECS]
    assert len(specs) == len(set(specs)), "two record specs for one study"
    assert set(specs) == committed


@pytest.mark.parametrize("path", SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_record_spec_reads_back_its_committed_study(path, read_only, monkeypatch):
    import json
    profile = yaml.safe_load(path.read_text())["profile"]
    record = read_only / "studies" / profile / f"{path.stem}.json"
    before = snapshot(read_only)
    frames = read_back(path, monkeypatch)
    assert snapshot(read_only) == before, "a file under results/runs or results/studies changed"
    got = [(r.label, int(r.seed), r.hash, r.status) for f in frames for r in f.itertuples()]
    assert all(status in ("finished", "pruned") for *_, status in got), got
    rows = json.loads(record.read_text())["rows"]
    assert sorted(g[:3] for g in got) == sorted((r["label"], r["seed"], r["hash"]) for r in rows)


def test_a_spec_naming_a_run_the_ledger_lacks_fails(read_only, monkeypatch, tmp_path):
    spec = yaml.safe_load((ROOT / "records" / "2026-11-25-epic1-optimizer" / "02_optimizer.yaml").read_text())
    spec["points"]["epic1"]["lr"] = 0.0007                 # a quick run nobody trained
    path = tmp_path / "02_optimizer.yaml"
    path.write_text(yaml.safe_dump(spec))
    record = read_only / "studies" / "quick" / "02_optimizer.json"
    before = record.read_bytes()
    with pytest.raises(AssertionError, match="does not hold"):
        read_back(path, monkeypatch)
    assert record.read_bytes() == before


def test_the_profile_a_spec_names_is_the_one_it_runs_under(read_only, monkeypatch, capsys):
    from mainrun import cli
    path = ROOT / "records" / "2026-11-25-epic1-optimizer" / "02_optimizer.yaml"
    assert cli.main(["sweep", str(path), "--profile", "full", "--quiet"]) == 2
    assert "names profile 'quick'" in capsys.readouterr().err
