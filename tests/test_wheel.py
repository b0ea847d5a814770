"""The package runs from a wheel: installed from the sources (pip install --no-deps --target DIR, no checkout
beside it) and run from another folder, every module imports, `train --profile smoke` trains, and `report`
says in one line what it lacks (the checkout's report/), status 2, no traceback."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, have_standin

pytestmark = pytest.mark.skipif(not have_standin(), reason="needs the offline corpus (../shared/data)")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, shared_cache):
    """(installed package folder, a folder outside any checkout, the environment that uses the install)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, site, elsewhere = tmp / "src", tmp / "site", tmp / "elsewhere"
    shutil.copytree(ROOT / "mainrun", src / "mainrun", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", src)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAINRUN_ROOT")}
    env.update(PYTHONPATH=str(site), MAINRUN_RESULTS=str(tmp / "results"), MAINRUN_CHECKPOINTS=str(tmp / "ckpt"),
               MAINRUN_CACHE=str(shared_cache), OMP_NUM_THREADS="1")
    return site, elsewhere, env


def mainrun(wheel, *args: str) -> subprocess.CompletedProcess:
    site, elsewhere, env = wheel
    return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600)


def test_every_module_imports_from_the_wheel_and_reads_no_checkout_file(wheel):
    site = wheel[0]
    modules = sorted(p.stem for p in (site / "mainrun").glob("*.py") if p.stem != "__main__")
    done = mainrun(wheel, "-c", f"import importlib, mainrun; print(mainrun.__file__)\n"
                               f"for m in {modules!r}: importlib.import_module('mainrun.' + m)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(site / "mainrun" / "__init__.py")      # the install, not the checkout


def test_train_and_report_from_the_wheel(wheel):
    done = mainrun(wheel, "-m", "mainrun", "train", "--profile", "smoke", "--quiet")
    assert done.returncode == 0 and '"status": "finished"' in done.stdout, done.stderr
    pdf = wheel[1] / "x.pdf"
    done = mainrun(wheel, "-m", "mainrun", "report", "--profile", "smoke", "--output", str(pdf))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and "report.qmd does not exist" in lines[0] and "MAINRUN_ROOT" in lines[0]
    assert not pdf.exists()
