"""The workbook end to end at the smoke profile: `make run PROFILE=smoke` into a temporary ledger
executes the five notebooks with papermill and renders a PDF that states the ledger's numbers."""
import json
import os
import re
import subprocess
import time
import unicodedata
from pathlib import Path

import nbformat
import pytest
from pypdf import PdfReader

from conftest import STANDIN

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_baseline", "02_optimizer", "03_architecture", "04_sweeps", "05_analysis")

pytestmark = pytest.mark.skipif(not (os.environ.get("MAINRUN_DATA") or STANDIN.exists()),
                                reason="needs the titles corpus (MAINRUN_DATA or ../shared/data)")


def checkout_data_files() -> set[str]:
    """The files under the checkout's data/ (git-ignored caches), as paths relative to it."""
    data = ROOT / "data"
    return {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()} if data.exists() else set()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, shared_cache):
    tmp = tmp_path_factory.mktemp("pipeline")
    # every cache (tokenizers, ids, HF arrow files) in the session's tmp cache, none in the checkout
    env = {**os.environ, "MAINRUN_RESULTS": str(tmp / "results"), "MAINRUN_CHECKPOINTS": str(tmp / "ckpt"),
           "MAINRUN_CACHE": str(shared_cache), "MAINRUN_DATA": os.environ.get("MAINRUN_DATA") or str(STANDIN)}
    data_before = checkout_data_files()
    t0 = time.time()
    proc = subprocess.run(["make", "--no-print-directory", "run", "PROFILE=smoke", f"NB_OUT={tmp / 'notebooks'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(f"make run PROFILE=smoke took {time.time() - t0:.0f}s")
    return {"proc": proc, "tmp": tmp, "results": tmp / "results", "notebooks": tmp / "notebooks",
            "pdf": tmp / "results" / "report-smoke.pdf", "cache": shared_cache,
            "new_data_files": checkout_data_files() - data_before}


def pdf_text(path: Path) -> str:
    """The PDF's text, ligatures unfolded, typographic quotes made plain, whitespace runs made one space."""
    text = " ".join(page.extract_text() for page in PdfReader(path).pages)
    text = unicodedata.normalize("NFKC", text).translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\""))
    return re.sub(r"\s+", " ", text)


def finished_summaries(results: Path) -> dict[str, dict]:
    out = {}
    for p in (results / "runs").glob("*/summary.json"):
        s = json.loads(p.read_text())
        if s["status"] == "finished":
            out[s["hash"]] = s
    return out


def test_make_run_smoke_succeeds(pipeline):
    proc = pipeline["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_caches_stay_out_of_the_checkout(pipeline):
    assert pipeline["new_data_files"] == set(), "make run wrote into the checkout's data/"
    assert list(pipeline["cache"].glob("tokenizer-*.json")) and list(pipeline["cache"].glob("ids-*.pt"))


def test_every_notebook_is_executed_without_errors(pipeline):
    for name in NOTEBOOKS:
        path = pipeline["notebooks"] / f"{name}.ipynb"
        assert path.exists(), f"{name}: no executed copy"
        nb = nbformat.read(path, as_version=4)
        assert not nb.metadata.papermill.get("exception"), f"{name}: papermill recorded an exception"
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
        assert nb.cells[1].metadata.get("tags") == ["parameters"]
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


def test_pdf_exists_and_has_pages(pipeline):
    assert pipeline["pdf"].exists()
    assert len(PdfReader(pipeline["pdf"]).pages) >= 2


def test_pdf_states_the_ledgers_final_numbers(pipeline):
    text = pdf_text(pipeline["pdf"])
    runs = finished_summaries(pipeline["results"])
    ladder = json.loads((pipeline["results"] / "studies" / "smoke" / "ladder.json").read_text())["stages"]
    baseline, final = runs[ladder[0]["hash"]], runs[ladder[-1]["hash"]]
    assert ladder[0]["stage"] == "baseline"
    assert f"{baseline['final_val_loss']:.4f}" in text
    assert f"{final['final_val_loss']:.4f}" in text
    assert f"{final['full_val_bpc']:.3f}" in text
    assert f"{final['final_val_loss'] / baseline['final_val_loss']:.3f}" in text
    # every run's loss is in the table of every run, which the PDF points to (it is left out of the PDF)
    table = (pipeline["results"] / "analysis" / "smoke" / "results.md").read_text()
    assert "results/analysis/full/results.md" in re.sub(r"\s+", "", text)
    missing = [s["name"] for s in runs.values() if f"{s['final_val_loss']:.4f}" not in table]
    assert not missing, f"runs whose official loss is not in results.md: {missing}"


def test_pdf_shows_every_figure_with_its_caption(pipeline):
    text = pdf_text(pipeline["pdf"])
    qmd = (ROOT / "report" / "report.qmd").read_text()
    captions = re.findall(r"^!\[(.+?)\]\((.+?)\)", qmd, re.M | re.S)
    assert len(captions) >= 3
    for caption, _ in captions:
        assert re.sub(r"\s+", " ", caption) in text, f"caption missing from the PDF: {caption}"
    images = sum(len(page.images) for page in PdfReader(pipeline["pdf"]).pages)
    assert images >= len(captions)


def test_no_machine_path_in_the_report_notebooks_or_records(pipeline):
    """Nothing the pipeline writes names the checkout's absolute path: not the PDF, the analysis outputs,
    the executed notebooks or the run records (the ledger path is shown relative, or as $TMPDIR/...)."""
    root = str(ROOT)
    assert root not in pdf_text(pipeline["pdf"]) and root not in pdf_text(pipeline["pdf"]).replace(" ", "")
    written = [p for sub in ("analysis", "runs", "studies") for p in (pipeline["results"] / sub).rglob("*")
               if p.is_file() and p.suffix in (".md", ".json", ".jsonl")]
    written += list(pipeline["notebooks"].glob("*.ipynb"))
    assert written
    leaks = [str(p.relative_to(pipeline["tmp"])) for p in written if root in p.read_text()]
    assert not leaks, f"the checkout's absolute path appears in: {leaks[:5]}"


def test_rendering_the_same_ledger_again_gives_the_same_pdf(pipeline, tmp_path):
    """The PDF's date comes from the ledger (report.ledger_timestamp), so a re-render is byte-identical."""
    from mainrun import report
    first = pipeline["pdf"].read_bytes()
    env = {"MAINRUN_RESULTS": str(pipeline["results"]), "MAINRUN_CACHE": str(pipeline["cache"])}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        again = report.render("smoke", output=tmp_path / "again.pdf")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert again.read_bytes() == first
