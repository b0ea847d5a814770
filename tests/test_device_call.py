"""scripts/device_call.py tried as on a lent GPU, but at the smoke profile on the CPU (--local): specs through
the Dask engine, a stack of what beat the reference, and only the new runs and studies packed."""
import subprocess
import sys
import tarfile

import pytest
import yaml

from conftest import ROOT, have_standin

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline corpus (../shared/data)")


def test_a_local_device_call_trains_stacks_and_packs_only_what_it_made(tmp_path, monkeypatch):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"base": {"batch_size": 32}, "points": {
        "ref": {}, "ref-s1338": {"train_seed": 1338}, "slow": {"lr": 1e-4}, "fast": {"lr": 2e-2}}}))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_call.py"), str(spec), "--local",
                           "--workers", "2", "--stack", "ref", "--stack-seeds", "1338", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "stack over ref" in done.stdout
    with tarfile.open(out / "ledger.tgz") as tar:
        names = tar.getnames()
    assert "studies/smoke/tiny.json" in names
    runs = {n.split("/")[1] for n in names if n.startswith("runs/")}
    assert {r.rsplit("-", 1)[0] for r in runs} >= {"smoke-tiny-ref", "smoke-tiny-ref-s1338", "smoke-tiny-slow",
                                                    "smoke-tiny-fast"}
    assert not any(n.endswith(".lock") for n in names)


def test_a_missing_spec_is_refused_before_anything_starts(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_call.py"), str(tmp_path / "nope.yaml"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "nope.yaml does not exist" in done.stderr
