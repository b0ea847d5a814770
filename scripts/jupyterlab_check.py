"""Open each notebook in a real JupyterLab, click Run > Run All Cells, save it, and check what was saved.

This is the workbook's "runs top to bottom in JupyterLab" check done the way a person does it, in a
headless Chromium driven by playwright. It works on copies of the notebooks in a temporary folder, so
the sources in notebooks/ are never touched; the runs come from the ledger as usual (with the default
`train = None` a full-profile notebook only reads it).

Needs, besides the project's venv (which has JupyterLab):
    apt-get install chromium          # a browser from Debian's packages
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright   # the driver, no browser download
Then, from the repository root:
    /tmp/pw/bin/python scripts/jupyterlab_check.py [--profile full] [--notebooks 01_baseline ...]
It writes results/jupyterlab/<profile>/check.json (per notebook: cells run, errors, figures, seconds,
how many Run All clicks it took) and one screenshot per notebook after its run, and exits 1 if a
notebook failed or did not finish (then the JupyterLab server log is kept beside them).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the notebook in front (earlier ones stay open in hidden tabs)
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
NOTEBOOKS = ["01_baseline", "02_optimizer", "03_architecture", "04_sweeps", "05_analysis"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    cmd = [str(REPO / ".venv/bin/jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"jupyter lab did not answer on port {port} within 300 s; see {log}")


def set_profile(nb_path: Path, profile: str) -> None:
    """What a person does first: edit `profile = ...` in the parameters cell."""
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = [re.sub(r'^profile = ".*?"', f'profile = "{profile}"', line)
                              for line in cell["source"]]
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def accept_dialog(page) -> None:
    """JupyterLab may ask which kernel to start; a person keeps the offered "Python 3 (ipykernel)"."""
    if page.query_selector(".jp-Dialog") is not None:
        page.click(".jp-Dialog .jp-mod-accept")


def kernel_idle(api: str, name: str) -> bool:
    """The server's word: this notebook's kernel is started and idle."""
    with urllib.request.urlopen(api, timeout=30) as r:
        sessions = json.load(r)
    return any(s["path"].endswith(f"{name}.ipynb") and s.get("kernel", {}).get("execution_state") == "idle"
               for s in sessions)


def run_notebook(page, base: str, token: str, name: str, shot: Path, timeout_s: float) -> tuple[float, int]:
    api = f"{base}/api/sessions?token={token}"
    page.goto(f"{base}/lab/tree/notebooks/{name}.ipynb?reset")          # ?reset: a fresh workspace
    page.wait_for_selector(f"{PANEL} .jp-CodeCell", timeout=300_000)
    t0 = time.time()
    while not kernel_idle(api, name):
        accept_dialog(page)
        if time.time() - t0 > 300:
            raise TimeoutError(f"{name}: no idle kernel after 300 s")
        time.sleep(1)
    page.wait_for_timeout(2000)
    t0, clicks, idle_since = time.time(), 0, None
    # Run > Run All Cells, then wait until every cell has its number and the kernel has idled a while.
    # A Run All that lands while the frontend is still settling on its kernel runs only part of the
    # notebook: after 15 idle seconds with cells unrun it is clicked again, at most 3 times; after an
    # error JupyterLab leaves the cells below it unrun, and the saved notebook shows it.
    while True:
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"{name}: still running after {timeout_s:.0f} s")
        accept_dialog(page)
        marks = page.eval_on_selector_all(f"{PANEL} .jp-CodeCell .jp-InputPrompt",
                                          "els => els.map(e => e.textContent.trim())")
        done = all(re.search(r"\d", m) for m in marks)
        if any("*" in m for m in marks) or not kernel_idle(api, name):
            idle_since = None
        else:
            idle_since = idle_since or time.time()
            idle_for = time.time() - idle_since
            if done and idle_for > 5:
                break
            if not done and (clicks == 0 or idle_for > 15):
                if clicks == 3:
                    break
                page.click('.lm-MenuBar-itemLabel:text-is("Run")')
                page.click('.lm-Menu-itemLabel:text-is("Run All Cells")')
                clicks, idle_since = clicks + 1, None
        time.sleep(2)
    seconds = time.time() - t0
    toast = page.query_selector('.jp-toast-button:text-is("No")')    # "Jupyter news?", out of the picture
    if toast:
        toast.click()
    page.click('.lm-MenuBar-itemLabel:text-is("File")')
    page.click('.lm-Menu-itemLabel:text-is("Save Notebook")')
    page.wait_for_timeout(3000)
    page.screenshot(path=str(shot))
    return seconds, clicks


def inspect(nb_path: Path) -> dict:
    """What the saved notebook holds: every code cell run, in order, without an error output."""
    nb = json.loads(nb_path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c.get("execution_count") for c in code]
    errors = [f'{o.get("ename")}: {o.get("evalue")}' for c in code for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    ran = [n for n in counts if n is not None]
    return {"code_cells": len(code), "cells_run": len(ran), "in_order": ran == sorted(ran),
            "errors": errors, "figures": images,
            "ok": len(ran) == len(code) and ran == sorted(ran) and not errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="full", choices=["full", "quick", "smoke"])
    ap.add_argument("--notebooks", nargs="+", default=NOTEBOOKS, choices=NOTEBOOKS)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per notebook")
    ap.add_argument("--out", type=Path, default=None, help="default: results/jupyterlab/<profile>")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = args.out or REPO / "results" / "jupyterlab" / args.profile
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mainrun-lab-"))
    (tmp / "notebooks").mkdir()
    for name in args.notebooks:
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", tmp / "notebooks")
        if args.profile != "full":
            set_profile(tmp / "notebooks" / f"{name}.ipynb", args.profile)
    port, token = free_port(), os.urandom(12).hex()
    lab_log = tmp / "jupyterlab.log"                   # kept in out/ only if the check fails
    lab = start_lab(tmp, port, token, lab_log)
    said = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip()  # noqa: E731
    record = {"profile": args.profile, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "git_commit": said("git", "-C", str(REPO), "rev-parse", "HEAD"),
              "jupyterlab": said(str(REPO / ".venv/bin/jupyter"), "lab", "--version"),
              "browser": said(args.chromium, "--version"),
              "how": "JupyterLab in headless Chromium (playwright): open, Run > Run All Cells, File > Save, "
                     "then the saved notebook is read back", "notebooks": {}}
    ok = True
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/lab?token={token}")       # sets the login cookie
            for name in args.notebooks:
                print(f"==> {name}: open, Run All Cells", flush=True)
                entry: dict = {}
                try:
                    seconds, clicks = run_notebook(page, f"http://127.0.0.1:{port}", token, name,
                                                   out / f"{name}.png", args.timeout)
                    entry.update(seconds=round(seconds, 1), run_all_clicks=clicks)
                    entry.update(inspect(tmp / "notebooks" / f"{name}.ipynb"))
                except Exception as e:                       # recorded, and the check fails
                    dialog = page.query_selector(".jp-Dialog")
                    entry.update(ok=False, failure=f"{type(e).__name__}: {str(e).splitlines()[0]}",
                                 dialog=dialog.inner_text() if dialog else None)
                    page.screenshot(path=str(out / f"{name}.png"))
                ok &= entry["ok"]
                record["notebooks"][name] = entry
                print(f"    {json.dumps(entry)}", flush=True)
            browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=60)
        except subprocess.TimeoutExpired:
            lab.kill()
        if not ok and lab_log.exists():
            shutil.copy(lab_log, out / "jupyterlab.log")
        elif ok:
            (out / "jupyterlab.log").unlink(missing_ok=True)   # a failed run's log does not outlive a passing one
        shutil.rmtree(tmp, ignore_errors=True)
    record["ok"] = ok
    (out / "check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'ok' if ok else 'FAILED'}: {out / 'check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
