"""Studies as data: a spec expanded into configs, study records and the ladder on disk, and the small
choices made over a study's table. Nothing here trains (the runner is `sweep.run_sweep`).

    spec = {"base":   {"preset": "epic1"},                        # applied to every point
            "points": {"base": {}, "rmsnorm": {"norm": "rmsnorm"}},   # named single changes
            "axes":   {"lr": [1e-4, 3e-4, 5e-4]},                 # each axis varied alone from the base
            "grid":   {"lr": [...], "dropout": [...]},            # every combination of these
            "seeds":  [1337, 1338]}                               # every point repeated per seed

An axis value may be a dict of overrides (a compound change); its plotted value is the entry named like the
axis. A study record (<results>/studies/<profile>/<study>.json) holds the specs a study ran and one row per
point; ladder.json beside it names the run of each rung of the ladder (presets.LADDER, RUNG_ORDER).
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import ledger
from .config import Config, make_config
from .presets import LADDER

SPEC_KEYS = ("base", "points", "axes", "grid", "seeds")
# Where and in what precision a study's points train: part of the study's definition, never guessed from
# the host, so a study asks for the same runs (hashes) on an AVX2 laptop, a CPU with native bf16 and a GPU
# machine. The committed studies are CPU fp32 studies; a spec's base may say otherwise (a GPU record
# sets device=cuda, precision=bf16), which makes them different runs.
EXECUTION = {"device": "cpu", "precision": "fp32"}
# Where the one-change-at-a-time studies run. Under full they run on the quick proxy and only the kept
# configuration is trained at full scale (a full-scale sweep would take days on 2 CPU cores).
STUDY_PROFILE = {"full": "quick", "quick": "quick", "smoke": "smoke"}
# The order of ladder.json's entries (each entry's "stage" is a rung's name): the rungs of presets.LADDER, the one
# table of the ladder, with the proxy's own rung after the seed plan's last (epic3): "beyond", the best of the
# changes past the seed plan on the proxy (notebook 04; the full-scale ladder goes on with the final rungs).
PROXY_RUNG = "beyond"
_RUNGS = [r["rung"] for r in LADDER]
RUNG_ORDER = (*_RUNGS[:_RUNGS.index("epic3") + 1], PROXY_RUNG, *_RUNGS[_RUNGS.index("epic3") + 1:])
# Fields that name or place a run rather than change it; left out of a rung's overrides.
IDENTITY = ("name", "profile", "preset", "data", "precision", "device", "checkpoint_every")


@dataclass
class Point:
    label: str                          # unique within the study, e.g. "lr=0.0005"
    overrides: dict[str, Any]           # on top of the spec's base
    axis: str | None = None             # the swept field (None for named points)
    value: Any = None                   # the axis value plotted
    seed: int | None = None             # None = the config's seed


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def check_shape(spec: dict) -> None:
    """A sweep spec's keys and the shape of their values, naming the key that is wrong: base and each point a
    mapping of config fields, each axis and grid entry a non-empty list, seeds a list of integers, and at least
    one point."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown sweep spec key(s): {', '.join(unknown)}; accepted: {', '.join(SPEC_KEYS)}")
    fields = "a mapping of config fields to values"
    lists = "a mapping of config fields to non-empty lists of values"
    of_lists = lambda v: isinstance(v, dict) and all(isinstance(x, list) and x for x in v.values())  # noqa: E731
    for key, ok, wanted in (("base", lambda v: isinstance(v, dict), fields),
                            ("points", lambda v: isinstance(v, dict) and all(isinstance(o, dict) for o in v.values()),
                             "a mapping of point labels to mappings of config fields to values"),
                            ("axes", of_lists, lists), ("grid", of_lists, lists),
                            ("seeds", lambda v: isinstance(v, list) and v and all(type(x) is int for x in v),
                             "a non-empty list of integers (train seeds)")):
        if key in spec and not ok(spec[key]):
            raise ValueError(f"sweep spec key {key!r} holds {spec[key]!r}; expected {wanted}")
    if not any(spec.get(k) for k in ("points", "axes", "grid")):
        raise ValueError("sweep spec has no points: give 'points', 'axes' or 'grid' (each non-empty)")


def expand(spec: dict) -> list[Point]:
    """The points of a spec, in order: named points, then each axis, then the grid; times seeds."""
    check_shape(spec)
    points = [Point(label, dict(ov)) for label, ov in spec.get("points", {}).items()]
    for axis, values in spec.get("axes", {}).items():
        for v in values:               # a value, or a dict of overrides holding the axis' value
            value, ov = (v.get(axis, _fmt(v)), dict(v)) if isinstance(v, dict) else (v, {axis: v})
            points.append(Point(f"{axis}={_fmt(value)}", ov, axis, value))
    grid = spec.get("grid", {})
    for combo in itertools.product(*grid.values()) if grid else []:
        ov = dict(zip(grid, combo))
        points.append(Point(",".join(f"{n}={_fmt(v)}" for n, v in ov.items()), ov, "grid", None))
    if seeds := spec.get("seeds"):
        points = [Point(p.label, {**p.overrides, "train_seed": s}, p.axis, p.value, s)
                  for p in points for s in seeds]
    labels = [(p.label, p.seed) for p in points]
    dupes = sorted({str(x) for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"sweep spec has repeated point labels: {', '.join(dupes)}")
    return points


def run_name(profile: str, study: str, label: str, seed: int | None) -> str:
    tail = label + (f"-seed{seed}" if seed is not None else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{profile}-{study}-{tail}").strip("_")


def build_configs(spec: dict, profile: str, study: str = "sweep") -> list[tuple[Point, Config]]:
    """Each point's full config: profile, then the base (which may name a preset), then the point."""
    base = dict(spec.get("base", {}))
    preset = base.pop("preset", "baseline")
    out = []
    for p in expand(spec):
        overrides = {**EXECUTION, **base, **p.overrides}
        overrides.setdefault("name", run_name(profile, study, p.label, p.seed))
        out.append((p, make_config(profile, preset, **overrides)))
    return out


SUMMARY_COLUMNS = ("status", "official", "final_val_loss", "full_val_bpc", "n_params", "steps",
                   "wall_time_s", "tokens_per_s")


# ----------------------------------------------------------------------------- records
def studies_dir(profile: str) -> Path:
    return ledger.results_root(profile) / "studies" / profile


def record_study(profile: str, study: str, spec: dict, rows: list[dict]) -> Path:
    """Upsert rows (keyed by label and seed) into <results>/studies/<profile>/<study>.json."""
    path = studies_dir(profile) / f"{study}.json"
    old = ledger.read_json(path) or {"study": study, "profile": profile, "specs": [], "rows": []}
    # rows keep their place (a re-read study writes nothing); new points go at the end
    merged = {(r["label"], r["seed"]): r for r in old["rows"]}
    for r in rows:
        merged[(r["label"], r["seed"])] = {k: r[k] for k in ("label", "axis", "value", "seed", "hash",
                                                             "overrides")}
    merged = json.loads(json.dumps(list(merged.values()), default=str))
    spec = json.loads(json.dumps(spec, default=str))
    # a spec is kept when it added or changed a row: reading a study back (records/) writes nothing
    specs = old["specs"] + ([spec] if merged != old["rows"] and spec not in old["specs"] else [])
    ledger.atomic_write_json(path, {"study": study, "profile": profile, "specs": specs, "rows": merged},
                             only_if_changed=True)
    return path


def mark_stage(profile: str, stage: str, row: Any, note: str = "") -> None:
    """Name a run as the rung `stage` of the ladder (baseline, epic1, ...): ladder.json, in RUNG_ORDER."""
    row = dict(row)
    path = studies_dir(profile) / "ladder.json"
    ladder = ledger.read_json(path) or {"profile": profile, "stages": []}
    entry = {"stage": stage, "hash": row["hash"], "label": row.get("label", stage), "note": note}
    stages = {s["stage"]: s for s in ladder["stages"]}
    stages[stage] = entry                   # a rung run again keeps its place
    # the rungs in their order (a notebook may run alone); a name not in RUNG_ORDER keeps its insertion order
    rank = {name: i for i, name in enumerate(RUNG_ORDER)}
    ladder["stages"] = sorted(stages.values(), key=lambda s: rank.get(s["stage"], len(RUNG_ORDER)))
    ledger.atomic_write_json(path, ladder, only_if_changed=True)   # a ladder a notebook re-reads stays put
    print(f"stage {stage!r} = {entry['label']} (run {row['hash']})" + (f": {note}" if note else ""))


def read_ladder(profile: str) -> list[dict]:
    return (ledger.read_json(studies_dir(profile) / "ladder.json") or {"stages": []})["stages"]


def stage_overrides(profile: str, stage: str, fallback_preset: str = "baseline") -> dict[str, Any]:
    """The config of a rung of the ladder as overrides of the profile's baseline (for the next study); a preset, with
    a printed note, while the stage has not been run (so a notebook still runs alone in JupyterLab)."""
    stages = {s["stage"]: s for s in read_ladder(profile)}
    run_dir = ledger.find_run(ledger.results_root(profile), stages[stage]["hash"]) if stage in stages else None
    if run_dir is None:
        print(f"stage {stage!r} is not in the {profile} ladder yet: starting from preset {fallback_preset!r}")
        return {"preset": fallback_preset}
    cfg = ledger.read_json(run_dir / "config.json")["config"]
    ref = make_config(profile, "baseline").to_dict()
    return {k: v for k, v in cfg.items() if k not in IDENTITY and ref.get(k) != v}


# ----------------------------------------------------------------------------- choosing
def by_point(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of the official loss per point over its seeds (finished runs only)."""
    ok = df[df["status"] == "finished"]
    g = ok.groupby("label", sort=False)["final_val_loss"]
    out = pd.DataFrame({"loss_mean": g.mean(), "loss_std": g.std(ddof=1), "seeds": g.size(),
                        "loss_min": g.min(), "loss_max": g.max()})
    first = ok.drop_duplicates("label").set_index("label")[["axis", "value", "overrides"]].copy()
    first["overrides"] = [{k: v for k, v in ov.items() if k not in ("seed", "train_seed")}
                          for ov in first["overrides"]]
    return out.join(first)


def row(df: pd.DataFrame, label: str, seed: int | None = None) -> pd.Series:
    """The row of one point (its first seed unless `seed` is given)."""
    hits = df[(df["label"] == label) & ((df["seed"] == seed) if seed is not None else True)]
    if hits.empty:
        raise KeyError(f"no point {label!r} in this study; points: {', '.join(dict.fromkeys(df['label']))}")
    return hits.iloc[0]


def finished(df: pd.DataFrame, label: str | None = None) -> bool:
    """Whether every point (or the point `label`) of a study frame has a finished run."""
    rows = df if label is None else df[df["label"] == label]
    return len(rows) > 0 and bool((rows["status"] == "finished").all())


def best_row(df: pd.DataFrame) -> pd.Series:
    """The row of the point with the lowest mean official loss over its seeds."""
    return row(df, by_point(df)["loss_mean"].idxmin())


def helpful(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Points that beat the reference point's loss, best first."""
    pts = by_point(df)
    ref = pts.loc[reference, "loss_mean"]
    return pts[(pts.index != reference) & (pts["loss_mean"] < ref)].sort_values("loss_mean")


def combine(points: pd.DataFrame) -> dict[str, Any]:
    """Merge the overrides of several points; for a field set by more than one, the best point wins."""
    merged: dict[str, Any] = {}
    for ov in points.sort_values("loss_mean", ascending=False)["overrides"]:
        merged.update(ov)
    return merged


def joint_best(df: pd.DataFrame) -> dict[str, Any]:
    """Every axis of a sweep at its lowest-loss value, together."""
    pts = by_point(df[df["axis"].notna() & (df["axis"] != "grid")])
    merged: dict[str, Any] = {}
    for _, g in pts.groupby("axis", sort=False):
        merged.update(g.sort_values("loss_mean").iloc[0]["overrides"])
    return merged


def widen(values: list, best: Any, factor: float = 2.0) -> list:
    """One more value beyond the edge of a grid when the best point sits on that edge; else []."""
    vals = sorted(values)
    if best == vals[-1]:
        return [float(f"{vals[-1] * factor:.3g}")]
    if best == vals[0]:
        return [float(f"{vals[0] / factor:.3g}")]
    return []


def accum_axis(grad_accum: list[int], lr_scaling: str) -> list[dict]:
    """Batch-size axis: gradient accumulation steps, with the LR rule applied above 1 micro-batch."""
    return [{"grad_accum": g} if g == 1 else {"grad_accum": g, "lr_scaling": lr_scaling} for g in grad_accum]
