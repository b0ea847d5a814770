"""Bring committed run records to the current record format, in place (idempotent; changes no hash).

    python scripts/normalise_records.py [results/]

- `data_source` (config.json and summary.json): the data file by name and sha256, plus its path relative
  to the checkout only when it lies inside it; the absolute path of the machine that made the run goes.
- `config.device`: runs recorded before the device was resolved say "auto"; it becomes the device the run
  trained on (the `hardware.device` of its summary, else its log's `device_info`). The hash does not
  change: for the (device, precision) pairs those runs had, the device stays out of the hash
  (config.UNHASHED_EXECUTION), and the script checks every hash it touches.

Logs (log.jsonl) are left as they were written.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mainrun import ledger
from mainrun.config import from_dict, run_hash
from mainrun.data import repo_root


def normalise_source(src: dict) -> dict:
    if src.get("kind") != "file" or "name" in src:
        return src
    path = Path(src["path"])
    out = {"kind": "file", "name": path.name, "sha256": src["sha256"]}
    root = str(repo_root().resolve())
    if not path.is_absolute():
        out["path"] = str(path)
    elif str(path).startswith(root + "/"):
        out["path"] = str(path.relative_to(root))
    return out


def main(results: Path) -> int:
    changed = 0
    for d in sorted((results / "runs").glob("*-*")):
        rec, summ = ledger.read_json(d / "config.json"), ledger.read_json(d / "summary.json")
        if rec is None:
            continue
        before = (dict(rec), dict(summ or {}))
        if rec["config"].get("device") == "auto":
            device = ((summ or {}).get("hardware") or {}).get("device") or ledger.log_progress(d / "log.jsonl")["device"]
            if device is None:
                print(f"skip {d.name}: cannot tell which device it trained on")
                continue
            rec["config"] = {**rec["config"], "device": device}
        rec["data_source"] = normalise_source(rec.get("data_source") or {})
        if summ is not None and "data_source" in summ:
            summ["data_source"] = normalise_source(summ["data_source"])
        if run_hash(from_dict(rec["config"]), rec["data_fingerprint"]) != rec["hash"]:
            raise SystemExit(f"{d.name}: the normalised record no longer reproduces its hash {rec['hash']}")
        if (rec, summ or {}) != before:
            ledger.atomic_write_json(d / "config.json", rec)
            if summ is not None:
                ledger.atomic_write_json(d / "summary.json", summ)
            changed += 1
    print(f"{changed} run records normalised under {ledger.display_path(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else repo_root() / "results"))
