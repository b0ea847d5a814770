"""The README's tables against the code and the ledger, so the guide cannot drift.

- knobs: one row per `Config` field, with the field's default and, for a field with a fixed set of values,
  every accepted value;
- presets: one row per preset; the preset it builds on plus the settings listed give exactly its config;
- profiles: one row per profile; the settings listed give exactly its config;
- results: each rung's losses, ratio, seeds, minutes, hardware and precision are what the committed run
  summaries say, and its record links are its round's folders (presets.LADDER), which hold its runs' specs.

    python tests/test_readme.py      # prints the tables as the code and the ledger give them
"""
from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

import pytest

from mainrun.config import CHOICES, PROFILES, Config, make_config
from mainrun.presets import LADDER, PRESETS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "results"
NONE = "-"  # a cell that sets nothing

# The ladder's rungs (mainrun.presets.LADDER): the study record and label that hold each rung's runs (its
# seeds). The rungs the CPU never trained at full scale (Epics 1-3) are read from the GPU ladder's study.
GPU_LADDER = "gpu_ladder"
RUNGS = {r["rung"]: (r["study"] or (GPU_LADDER if r["rung"] != "baseline" else None), r["rung"]) for r in LADDER}


# ---- reading the README's markdown tables
def split_row(line: str) -> list[str]:
    """`| a | b |` -> ['a', 'b']; a `\\|` inside a cell is a literal bar."""
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every pipe table in the text, keyed by its first header cell: a list of {header: cell} rows."""
    out: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip()):
            header = split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, split_row(lines[i]))))
                i += 1
            if header[0] in out:
                raise AssertionError(f"README: two tables start with the column {header[0]!r}")
            out[header[0]] = rows
        else:
            i += 1
    return out


def code(cell: str) -> str:
    """The text of the first `code span` of a cell."""
    m = re.search(r"`([^`]*)`", cell)
    if not m:
        raise AssertionError(f"README: no `code` in the cell {cell!r}")
    return m.group(1)


def settings(cell: str) -> dict[str, str]:
    """`a=1 b=x` (one code span, or several) -> {'a': '1', 'b': 'x'}; '-' -> {}."""
    if cell.strip() == NONE:
        return {}
    items = " ".join(re.findall(r"`([^`]*)`", cell)).split()
    bad = [it for it in items if "=" not in it]
    assert not bad, f"README: {bad} in {cell!r} are not NAME=VALUE"
    return dict(it.split("=", 1) for it in items)


def readme_tables() -> dict[str, list[dict[str, str]]]:
    return tables(README.read_text())


# ---- the tables as the code gives them
def fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, str):
        return value or '""'
    return str(value)


def field_comments() -> dict[str, str]:
    """Each Config field's comment in config.py, its continuation lines joined."""
    src = (ROOT / "mainrun" / "config.py").read_text()
    body = src[src.index("class Config:"):src.index("    def hash_fields")]
    out, last = {}, None
    for line in body.splitlines():
        m = re.match(r"    (\w+): \w+ = [^#]*?(?:#\s*(.*))?$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2) or ""
        elif last and re.match(r"\s{20,}#", line):
            out[last] += " " + line.split("#", 1)[1].strip()
    return out


def parent_of(preset: str) -> str | None:
    """The earlier preset whose config differs least from this one's (None for the first)."""
    names = list(PRESETS)
    earlier = names[: names.index(preset)]
    if not earlier:
        return None
    mine = make_config("full", preset).to_dict()

    def diff(p):
        other = make_config("full", p).to_dict()
        return sum(mine[k] != other[k] for k in mine if k != "preset")
    return min(reversed(earlier), key=diff)


def preset_settings(preset: str) -> dict[str, object]:
    parent = parent_of(preset)
    mine = make_config("full", preset).to_dict()
    ref = make_config("full", parent or "baseline").to_dict()
    return {k: v for k, v in mine.items() if k != "preset" and v != ref[k]}


def knob_lines() -> list[str]:
    comments = field_comments()
    lines = ["| knob | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Config):
        choices = f" (one of {', '.join(f'`{c}`' for c in CHOICES[f.name])})" if f.name in CHOICES else ""
        lines.append(f"| `{f.name}` | `{fmt(f.default)}` | {comments.get(f.name, '')}{choices} |")
    return lines


def preset_lines() -> list[str]:
    lines = ["| preset | builds on | sets | recipe |", "|---|---|---|---|"]
    for p in PRESETS:
        sets = " ".join(f"{k}={fmt(v)}" for k, v in preset_settings(p).items())
        lines.append(f"| `{p}` | {f'`{parent_of(p)}`' if parent_of(p) else NONE} | "
                     f"{f'`{sets}`' if sets else NONE} | |")
    return lines


def profile_lines() -> list[str]:
    lines = ["| profile | sets | for |", "|---|---|---|"]
    for p, values in PROFILES.items():
        sets = " ".join(f"{k}={fmt(v)}" for k, v in values.items())
        lines.append(f"| `{p}` | {f'`{sets}`' if sets else NONE} | |")
    return lines


# ---- the results as the ledger gives them
def run_summary(h: str) -> dict:
    folders = list((RESULTS / "runs").glob(f"*-{h}"))
    assert len(folders) == 1, f"run {h}: {len(folders)} folders in results/runs"
    return json.loads((folders[0] / "summary.json").read_text())


def rung_hashes(rung: str) -> list[str]:
    study, label = RUNGS[rung]
    if study is None:
        ladder = json.loads((RESULTS / "studies" / "full" / "ladder.json").read_text())
        return [s["hash"] for s in ladder["stages"] if s["stage"] == label]
    record = json.loads((RESULTS / "studies" / "full" / f"{study}.json").read_text())
    return [r["hash"] for r in record["rows"] if r["label"] == label]


def rung_cells(rung: str, baseline_loss: float) -> dict[str, str]:
    """The numeric cells of a rung's row: the official (seed 1337) run's loss and ratio, the seeds' mean and
    sample std, their wall times and how many of them took 60 minutes or less."""
    runs = [run_summary(h) for h in rung_hashes(rung)]
    official = [s for s in runs if s["official"]]
    assert len(official) == 1, f"{rung}: {len(official)} official runs"
    losses = [s["final_val_loss"] for s in runs]
    minutes = [s["wall_time_s"] / 60 for s in runs]
    seeds = (f"{len(runs)}: {statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}"
             if len(runs) > 1 else "1")
    wall = (f"{min(minutes):.1f}-{max(minutes):.1f}" if len(runs) > 1 else f"{minutes[0]:.1f}")
    return {"official loss": f"{official[0]['final_val_loss']:.4f}",
            "ratio": f"{official[0]['final_val_loss'] / baseline_loss:.3f}",
            "seeds": seeds, "minutes": wall,
            "≤ 60 min": f"{sum(m <= 60 for m in minutes)} of {len(runs)}"}


def hardware_cell(rung: str) -> str:
    """Where and in what precision the rung's runs trained, as the summaries record it (one value for all its
    seeds): `CPU: AMD EPYC, 2 cores, fp32` or `**GPU**: H200, bf16`."""
    def where(s: dict) -> str:
        hw = s["hardware"]
        if hw["device"] == "cuda":
            return f"**GPU**: {hw['gpu'].removeprefix('NVIDIA ')}, {s['precision']}"
        cpu = " ".join(re.sub(r"\((R|TM)\)", "", hw["cpu"]).replace(" Processor", "").split())
        return f"CPU: {cpu}, {hw['cpu_count']} cores, {s['precision']}"
    cells = {where(run_summary(h)) for h in rung_hashes(rung)}
    assert len(cells) == 1, f"{rung}: its seeds ran on different hardware: {sorted(cells)}"
    return cells.pop()


def spec_round(study: str) -> str:
    """The records/ folder holding a study's spec (<study>.yaml)."""
    folders = sorted({p.parent.name for p in (ROOT / "records").glob(f"*/{study}.yaml")})
    assert len(folders) == 1, f"the spec of study {study}: in {folders or 'no records/ folder'}"
    return folders[0]


def record_cell(rung: str) -> str:
    """The rung's round (presets.LADDER), named as its folder without the date; a rung read from the GPU ladder
    first names the GPU ladder's round, then its own as the proxy."""
    own = next(r["record"] for r in LADDER if r["rung"] == rung)
    links = [(own.split("-", 3)[3], own)]
    if RUNGS[rung][0] == GPU_LADDER:
        gpu = spec_round(GPU_LADDER)
        links = [(gpu.split("-", 3)[3], gpu), ("proxy", own)]
    return ", ".join(f"[{name}](records/{folder}/)" for name, folder in links)


def result_lines() -> list[str]:
    base = run_summary(rung_hashes("baseline")[0])["final_val_loss"]
    cols = ["official loss", "ratio", "seeds", "minutes", "≤ 60 min"]
    lines = ["| rung | " + " | ".join(cols) + " | hardware, precision | record |", "|---" * (len(cols) + 3) + "|"]
    for rung in RUNGS:
        cells = rung_cells(rung, base)
        lines.append(f"| {rung} | " + " | ".join(cells[c] for c in cols) + f" | {hardware_cell(rung)} | "
                     f"{record_cell(rung)} |")
    return lines


# ---- the tests
def knob_rows() -> dict[str, tuple[str, str]]:
    """{field: (its default as written, its row's meaning)}; a row may list several knobs, `a`, `b`, with
    their defaults in the same order."""
    out = {}
    for r in readme_tables()["knob"]:
        names, defaults = re.findall(r"`([^`]*)`", r["knob"]), re.findall(r"`([^`]*)`", r["default"])
        assert names and len(names) == len(defaults), f"README knobs row {r['knob']}: {len(defaults)} defaults"
        for n, d in zip(names, defaults):
            assert n not in out, f"README knobs table lists {n} twice"
            out[n] = (d, r["meaning"])
    return out


def test_every_config_field_is_a_knob_row_with_its_default_and_values():
    rows = knob_rows()
    names = [f.name for f in dataclasses.fields(Config)]
    assert not set(names) - set(rows), f"README knobs table lacks {sorted(set(names) - set(rows))}"
    assert not set(rows) - set(names), f"README knobs table lists {sorted(set(rows) - set(names))}, not Config fields"
    assert list(rows) == names, "README knobs table: rows not in config.py's order"
    for f in dataclasses.fields(Config):
        default, meaning = rows[f.name]
        assert default == fmt(f.default), (f"README: knob {f.name} default {default!r}, "
                                           f"config.py says {fmt(f.default)!r}")
        for choice in CHOICES.get(f.name, ()):
            assert f"`{choice}`" in meaning, f"README: knob {f.name} does not name `{choice}`"


def test_every_preset_row_builds_exactly_its_config():
    rows = {code(r["preset"]): r for r in readme_tables()["preset"]}
    assert list(rows) == list(PRESETS), f"README presets {list(rows)}, config.py {list(PRESETS)}"
    for p, row in rows.items():
        parent = NONE if row["builds on"] == NONE else code(row["builds on"])
        base = "baseline" if parent == NONE else parent
        assert base in PRESETS, f"README: preset {p} builds on {base!r}, not a preset"
        built = make_config("full", base, **settings(row["sets"])).to_dict()
        want = make_config("full", p).to_dict()
        diff = {k: (built[k], want[k]) for k in want if k != "preset" and built[k] != want[k]}
        assert not diff, f"README: preset {p} row gives {diff} (README, config.py)"


def test_every_profile_row_builds_exactly_its_config():
    rows = {code(r["profile"]): r for r in readme_tables()["profile"]}
    assert list(rows) == list(PROFILES), f"README profiles {list(rows)}, config.py {list(PROFILES)}"
    for p, row in rows.items():
        built = make_config("full", "baseline", **settings(row["sets"])).to_dict()
        want = make_config(p, "baseline").to_dict()
        diff = {k: (built[k], want[k]) for k in want if k != "profile" and built[k] != want[k]}
        assert not diff, f"README: profile {p} row gives {diff} (README, config.py)"


@pytest.mark.parametrize("rung", list(RUNGS))
def test_results_table_is_what_the_ledger_gives(rung):
    rows = {r["rung"]: r for r in readme_tables()["rung"]}
    assert rung in rows, f"README results table has no row {rung!r}"
    base = run_summary(rung_hashes("baseline")[0])["final_val_loss"]
    want = {**rung_cells(rung, base), "hardware, precision": hardware_cell(rung), "record": record_cell(rung)}
    assert set(rows[rung]) == {"rung", *want}, f"README results table columns: {list(rows[rung])}"
    got = {k: rows[rung][k] for k in want}
    assert got == want, f"README results row {rung}: {got}, the ledger gives {want}"


@pytest.mark.parametrize("rung", list(RUNGS))
def test_each_results_row_links_the_round_that_holds_its_runs(rung):
    """Every linked records/ folder has its README, and the first holds the spec of a study that holds the
    rung's official run."""
    rows = {r["rung"]: r for r in readme_tables()["rung"]}
    folders = re.findall(r"\]\(records/([^/)]+)/\)", rows[rung]["record"])
    assert folders and all((ROOT / "records" / f / "README.md").is_file() for f in folders), folders
    official = [h for h in rung_hashes(rung) if run_summary(h)["official"]]
    specs = {p.stem for p in (ROOT / "records" / folders[0]).glob("*.yaml")}
    holding = {p.stem for p in (RESULTS / "studies" / "full").glob("*.json")
               if p.stem in specs and any(r["hash"] in official for r in json.loads(p.read_text()).get("rows", []))}
    assert holding, f"README results row {rung}: records/{folders[0]}/ holds no spec of a study with run {official}"


def test_the_table_reader_sees_a_missing_row():
    text = "\n".join(["| knob | default | meaning |", "|---|---|---|", "| `lr` | `0.006` | peak LR |"])
    rows = {code(r["knob"]) for r in tables(text)["knob"]}
    assert rows == {"lr"}
    assert settings("`a=1 b=x`") == {"a": "1", "b": "x"} and settings(NONE) == {}
    with pytest.raises(AssertionError):
        settings("`a=1 b`")


if __name__ == "__main__":
    for lines in (result_lines(), profile_lines(), preset_lines(), knob_lines()):
        print("\n".join(lines), end="\n\n")
