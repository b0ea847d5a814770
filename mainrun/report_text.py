"""The report's generated text: its tables (results, ladder, changes, findings, the one-change screens) and
the paragraphs whose wording follows the data. The words are in report/text.yml, which studies are which in
report/studies.yml (passed in as `spec` dicts); each function returns text, a frame or (markdown, numbers)."""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from . import ledger
from .config import CPU_BUDGET_S, PUBLISHED_BASELINE, STANDIN_SHA256, Config, make_config
from .formats import fmt_bpc, fmt_int, fmt_loss, fmt_ratio, fmt_time, is_nan, md_table
from .presets import LADDER
from .stats import (NO_CHANGE, agreement, curve_agreement, fold_seed_labels, permutation_p, relative_cost,
                    study_effects, truncation_agreement)
from .studies import by_point
from .tables import PAUSE_GAP_S, read_curve, study_frame



def read_text() -> dict:
    """report/text.yml of the checkout (MAINRUN_ROOT): the report's words ship with a checkout, not the package."""
    path = ledger.repo_root() / "report" / "text.yml"
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: the report's words are read from a checkout of mainrun; "
                                f"run this from one, or set MAINRUN_ROOT to one") from None


class _Lazy(Mapping):
    """A mapping built at its first use, so that importing this module reads no file (a wheel has no report/)."""

    def __init__(self, build: Callable[[], dict]):
        self._build = build

    @functools.cached_property
    def _data(self) -> dict:
        return self._build()

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


TEXT = _Lazy(read_text)
# each profile's note on its scale; full's names the proxy
PROXY_NOTE = _Lazy(lambda: {p: "" if p == "full" else t for p, t in TEXT["profile_note"].items()})

DEVICE_NAME = {"cpu": "CPU", "cuda": "GPU"}


def say(key: str, **values) -> str:
    """The text of report/text.yml at `key` ("group.name"), its placeholders filled from `values`."""
    node = TEXT
    for part in key.split("."):
        node = node[part]
    return node.format(**values)


# ----------------------------------------------------------------------------- tables
# the ledger's columns as the tables print them: header -> (column, format)
COLUMNS = {"official loss": ("final_val_loss", fmt_loss), "full bits/char": ("full_val_bpc", fmt_bpc),
           "ratio": ("ratio_to_baseline", fmt_ratio), "params": ("n_params", fmt_int),
           "wall time": ("wall_time_s", fmt_time), "tokens/s": ("tokens_per_s", fmt_int)}


def formatted(frame: pd.DataFrame, *headers: str) -> dict[str, pd.Series]:
    """The COLUMNS named by `headers`, read from `frame` and formatted as the tables print them."""
    return {h: frame[COLUMNS[h][0]].map(COLUMNS[h][1]) for h in headers}


def results_table(results: pd.DataFrame, profile: str) -> pd.DataFrame:
    done = results[results["status"] == "finished"].sort_values("final_val_loss")
    return pd.DataFrame({"run": done["run"].str.removeprefix(profile + "-"),
                         **formatted(done, "official loss", "full bits/char", "ratio", "params", "wall time",
                                     "tokens/s"),
                         "official": done["official"].map(lambda o: "yes" if o else "no")})


def _loss_or_progress(row: pd.Series) -> str:
    """The official loss, or for a run still training its last logged one."""
    if row.get("final_val_loss") is not None and not is_nan(row.get("final_val_loss")):
        return fmt_loss(row["final_val_loss"])
    last = row.get("last_val_loss")
    if row.get("status") == "incomplete" and last is not None and not is_nan(last):
        return f"training: {fmt_loss(row['last_val_loss'])} at step {int(row['last_val_step'])}"
    return "n/a"


def vs_previous(losses: pd.Series) -> list[str]:
    """Each loss against the one before it, as a signed percentage ("" for the first or a missing one)."""
    return ["" if is_nan(p) or is_nan(x) else f"{x / p - 1:+.1%}" for x, p in zip(losses, losses.shift(1))]


def ladder_table(ladder: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"stage": ladder["stage"], "run": ladder["label"],
                         "official loss": [_loss_or_progress(r) for _, r in ladder.iterrows()],
                         "vs previous": vs_previous(ladder["final_val_loss"]),
                         **formatted(ladder, "ratio", "full bits/char", "params", "wall time", "tokens/s")})


BASELINE_FIELDS = ("optimizer", "lr", "schedule", "n_layer", "n_head", "d_model", "vocab_size", "norm", "pos",
                   "dropout", "batch_size", "epochs", "num_titles")
NOT_SETTINGS = ("name", "profile", "preset", "data", "precision", "device", "checkpoint_every")


def changes_table(ladder: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Each stage's config as changes from the profile's baseline, read from the run's config.json."""
    ref = make_config(profile, "baseline").to_dict()
    rows = []
    for st in ladder.dropna(subset=["dir"]).itertuples():
        cfg = ledger.read_json(Path(st.dir) / "config.json")["config"]
        if st.stage == "baseline":
            text = "the baseline: " + ", ".join(field_words(k, cfg[k]) for k in BASELINE_FIELDS)
        else:
            diff = {k: v for k, v in cfg.items() if k not in NOT_SETTINGS and ref.get(k) != v}
            text = ", ".join(field_words(k, v) for k, v in diff.items()) or "none"
        rows.append({"stage": st.stage, "configuration": text})
    return pd.DataFrame(rows, columns=["stage", "configuration"])


def findings_md(found: pd.DataFrame) -> str:
    """What worked, one table per `scale` (one table if absent), best first; a verdict is read on the full-coverage
    loss where the change moves the scored text, and a difference inside 2 x `noise` (the seed std) is marked."""
    scales = found["scale"].tolist() if "scale" in found else ["every scale"] * len(found)
    parts = [say("findings.intro", no_change=NO_CHANGE)]
    for i, scale in enumerate(dict.fromkeys(scales)):
        sub = found[[s == scale for s in scales]].sort_values("judged_delta")
        rows = []
        for r in sub.itertuples():
            verdict = r.verdict
            if r.judged_on == "full coverage":
                verdict += say("findings.full_coverage", coverage=r.coverage,
                               reference_coverage=r.reference_coverage)
            elif (getattr(r, "noise", None) and not is_nan(r.noise)
                  and abs(r.loss - r.reference_loss) < 2 * r.noise):
                verdict = say("findings.noise")   # not called "helped" or "did not help"
            rows.append({"change": r.change, "study": r.study, "against": r.reference,
                         "official": f"{fmt_loss(r.loss)} vs {fmt_loss(r.reference_loss)}",
                         "official change": f"{r.delta:+.2%}",
                         "full-coverage change": "" if is_nan(r.full_delta) else f"{r.full_delta:+.2%}",
                         "seeds": str(r.seeds), "verdict": verdict})
        parts.append(md_table(pd.DataFrame(rows), "lllrrrrl") if rows else say("findings.none"))
        parts.append(say("findings.caption", scale=scale, i=i + 1))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- paragraphs
def edges_md(sweep: pd.DataFrame | None, flat: float = 1e-3) -> str:
    """Per swept axis of a one-axis sweep, where its best value lies in the grid (the sweep widens an edge at
    most twice), or that the axis is flat: its points' losses spread by under `flat` of their mean."""
    if sweep is None or sweep.empty:
        return ""
    out = []
    for axis in dict.fromkeys(sweep["axis"].dropna()):
        pts = by_point(sweep[sweep["axis"] == axis])
        values = pd.to_numeric(pts["value"], errors="coerce")
        if axis == "grid" or pts.empty or values.isna().any():
            continue
        name = TEXT["sweep_axes"].get(axis, axis.replace("_", " "))
        tried = ", ".join(f"{v:g}" for v in sorted(values))
        spread = pts["loss_mean"].max() - pts["loss_mean"].min()
        if spread < flat * pts["loss_mean"].mean():
            out.append(say("sweep_flat", axis=name, tried=tried, spread=spread))
            continue
        best = values[pts["loss_mean"].idxmin()]
        if best in (values.min(), values.max()):
            end = "largest" if best == values.max() else "smallest"
            out.append(say("sweep_edge", axis=name, best=best, end=end, tried=tried))
        else:
            out.append(say("sweep_inside", axis=name, best=best, tried=tried))
    return " ".join(t.strip() for t in out) + ("\n" if out else "")


def _machine_note(final: pd.Series, base: pd.Series) -> str:
    """The final run's CPU model and precision beside the baseline's where they differ (the text before the
    hardware's parenthesis: threads or a torch version are not another machine); else empty."""
    def kind(row: pd.Series) -> tuple[str, str] | None:
        hw, prec = row.get("hardware"), row.get("precision")
        return (hw.split(" (")[0], prec) if isinstance(hw, str) and isinstance(prec, str) else None
    a, b = kind(final), kind(base)
    if a is None or b is None or a == b:
        return ""
    return f"{a[0]}, {a[1]}; the baseline: {b[0]}, {b[1]}"


def summary_md(n: dict, final: pd.Series, base: pd.Series) -> str:
    """The summary's paragraph: baseline, last rung, its seeds, the best rungs, whether it is official."""
    f, prof, fs = n["formatted"], n["profile"], n.get("final_seeds")
    what = {r["rung"]: r["what"] for r in LADDER}.get(n["final_stage"])
    over = (n.get("final_device") == "cpu" and prof == "full"
            and (n["final"].get("wall_time_s") or 0) > CPU_BUDGET_S)
    notes = [_machine_note(final, base), say("summary.over_budget", budget=CPU_BUDGET_S // 60) if over else ""]
    notes = [x for x in notes if x]
    s = [say("summary.published", published=PUBLISHED_BASELINE)] if prof == "full" else []
    s.append(say("summary.main", **f, profile=prof, scale=TEXT["summary"]["scale"][prof], n_runs=n["n_runs"],
                 where=(f" (on the {DEVICE_NAME.get(n['baseline_device'], '?')})" if n.get("ratio_provisional")
                        else ""),
                 final_stage=n["final_stage"], what=f", {what}," if what else "",
                 wall=fmt_time(n["final"]["wall_time_s"]), device=DEVICE_NAME.get(n.get("final_device"), "?"),
                 notes=f" ({'; '.join(notes)})" if notes else ""))
    if fs:
        text = say("summary.seeds", n=fs["n"], mean=fmt_loss(fs["mean"]), std=fmt_loss(fs["std"]),
                   ratio=fmt_ratio(fs["ratio"]), fastest=fmt_time(fs["wall_min_s"]),
                   slowest=fmt_time(fs["wall_max_s"]))
        if fs["over_budget"] and n.get("final_device") == "cpu":
            text += say("summary.seeds_over_budget", **fs)
            if fs.get("tps_min") is not None:   # the same steps at different speeds: the machine, not the recipe
                text += say("summary.seeds_speeds", **fs, slower=fs["tps_max"] / fs["tps_min"])
        s.append(text + ".")
    rfc = n.get("ratio_full_coverage")
    if rfc is not None and not is_nan(rfc):
        s.append(say("summary.full_coverage", ratio=fmt_ratio(rfc)))
    if n["time_to_baseline_s"] is not None:
        s.append(say("summary.time_to_baseline", time=fmt_time(n["time_to_baseline_s"])))
    for key in ("best_single", "best_in_budget"):
        b = n.get(key)
        if b and b["rung"] != n["final_stage"]:
            s.append(say("summary.best", **dict(b, loss=fmt_loss(b["loss"]), ratio=fmt_ratio(b["ratio"])),
                         who=say(f"summary.{key}"), time=fmt_time(b["wall_time_s"])))
    official = final.get("official")
    official = bool(official) if official is not None and not is_nan(official) else False
    s.append(say("summary.official" if official else "summary.not_official"))
    return " ".join(s) + "\n"


def setup_md(results: pd.DataFrame, base: pd.Series, profile: str) -> str:
    """What the runs ran on: data, hardware, precision, profile, code versions, paused runs."""
    src = ledger.read_json(Path(base["dir"]) / "config.json").get("data_source", {})
    name = src.get("name") or Path(src.get("path", "?")).name
    kind = "hub" if src.get("kind") == "hub" else "standin" if src.get("sha256") == STANDIN_SHA256 else "other"
    text = say("setup.list", titles=base["num_titles"], val_frac=base["val_frac"], profile=profile,
               data=say(f"setup.{kind}", dataset=src.get("dataset"), name=name, sha=STANDIN_SHA256[:12]),
               hardware=hardware_words(results),
               finished=int((results["status"] == "finished").sum()))
    paused = results[results["paused_s"] > 0] if "paused_s" in results else results.iloc[:0]
    if len(paused):
        text += say("setup.paused", n=len(paused), runs_were="runs were" if len(paused) > 1 else "run was",
                    time=fmt_time(paused["paused_s"].sum()), gap_min=PAUSE_GAP_S / 60)
    return text


def hardware_words(results: pd.DataFrame) -> str:
    """Each kind of machine the runs trained on (the text before its parenthesis: threads or a torch version are
    not another machine), its device and the precisions its runs used, and how many runs."""
    done = results.dropna(subset=["hardware"])
    kinds = done.assign(kind=done["hardware"].str.split(" (", regex=False).str[0])
    return "; ".join(say("setup.machine", kind=k, device=DEVICE_NAME.get(g["device"].iloc[0], g["device"].iloc[0]),
                         precisions=" and ".join(sorted(g["precision"].dropna().unique())), n=len(g))
                     for k, g in kinds.groupby("kind"))


def code_versions_md(results: pd.DataFrame) -> str:
    """Runs whose code is not one clean commit: no recorded commit, uncommitted changes (*), or several."""
    groups: dict[str, list[str]] = {}
    for r in results[results["status"] == "finished"].itertuples():
        hist = (ledger.read_json(Path(r.dir) / "summary.json") or {}).get("code_history") or []
        if len(hist) == 1 and hist[0].get("git_commit") and hist[0].get("git_dirty") is False:
            continue
        seg = [c["git_commit"][:7] + ("*" if c.get("git_dirty") else "") if c.get("git_commit")
               else "no recorded commit" for c in hist] or ["no recorded commit"]
        groups.setdefault(" then ".join(seg), []).append(r.run)
    if not groups:
        return say("setup.one_commit")
    parts = [(", ".join(f"`{n}`" for n in runs) if len(runs) <= 2 else f"{len(runs)} runs (`{runs[0]}`, ...)")
             + f": {hist}" for hist, runs in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return say("setup.code_versions", groups="; ".join(parts))


def baselines_md(n: dict, results: pd.DataFrame) -> str:
    """The baselines of two devices: how far the pending one has come while a ratio is provisional
    (n["curve_agreement"]), else how far apart the two finished ones are (n["baseline_agreement"])."""
    dev = lambda d: DEVICE_NAME.get(d, d)   # noqa: E731
    run_dir = lambda h: results.loc[results["hash"] == h, "dir"].iloc[0]   # noqa: E731  (local paths)
    base = n["baseline"]
    if n["ratio_provisional"]:
        pend, fin = n["pending_baseline"], dev(n["final_device"])
        s = [say("summary.provisional", final=fin, other=DEVICE_NAME.get(n["baseline_device"], "?"),
                 run=base["run"], loss=fmt_loss(base["final_val_loss"]))]
        if pend:
            agree = curve_agreement(run_dir(pend["hash"]), run_dir(base["hash"]))
            s.append(say("summary.pending", final=fin, run=pend["run"], last_step=pend["last_step"],
                         max_steps=pend["max_steps"], loss=fmt_loss(pend["last_val_loss"]),
                         step=pend["last_val_step"]))
            if agree:
                n["curve_agreement"] = agree
                s.append(say("summary.pending_agrees", **agree, final=fin))
        return "\n" + " ".join(s) + "\n"
    bases = results[results["is_baseline"]]
    if len(bases) < 2:
        return ""
    ref, other = bases[bases["hash"] == base["hash"]].iloc[0], bases[bases["hash"] != base["hash"]].iloc[0]
    s = [say("summary.two_baselines", ref=f"{dev(ref['device'])} ({ref['precision']})",
             other=f"{dev(other['device'])} ({other['precision']})", loss=fmt_loss(other["final_val_loss"]),
             delta=other["final_val_loss"] / ref["final_val_loss"] - 1)]
    agree = curve_agreement(ref["dir"], other["dir"])
    if agree:
        n["baseline_agreement"] = agree
        s.append(say("summary.two_baselines_agree", **agree))
    return "\n" + " ".join(s + [say("summary.two_baselines_end")]) + "\n"


# ----------------------------------------------------------------------------- screens
def screen_frame(recs: dict[str, dict], results: pd.DataFrame, studies: list[str],
                 leave_out_prefix: str | None = None) -> pd.DataFrame:
    """Several study records as one one-change study: extra seeds under their point's label, each run
    once, labels starting with `leave_out_prefix` left out."""
    frames = [study_frame(recs[k], results) for k in studies if k in recs]
    if not frames:
        return pd.DataFrame()
    f = pd.concat(frames, ignore_index=True)
    if leave_out_prefix:
        f = f[~f["label"].str.startswith(leave_out_prefix)]
    return fold_seed_labels(f).drop_duplicates("hash").reset_index(drop=True)


def findings(recs: dict[str, dict], results: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Every single change against its reference: each study that is not a screen, a search or in
    spec["not_findings"] against its first point, each screen against its named one (`noise`: its seed std)."""
    in_screens = {s for sc in spec.get("screens", []) for s in sc["studies"]}
    rows = []
    for name, rec in recs.items():
        if (name in spec.get("not_findings", []) or name in in_screens
                or any(r.get("axis") == "search" for r in rec["rows"])):
            continue
        ref = rec["rows"][0]["label"] if rec["rows"] else None
        f = study_frame(rec, results)
        rows += _with_words([dict(r, noise=None) for r in study_effects(name, f, ref, results)], f, results, spec)
    for sc in spec.get("screens", []):
        f = screen_frame(recs, results, sc["studies"], sc.get("leave_out_prefix"))
        if len(f):   # noise: the reference's own seed spread, where it has seeds
            ref = f.loc[(f["label"] == sc["reference"]) & (f["status"] == "finished"), "final_val_loss"]
            sd = float(ref.std()) if len(ref) > 1 else None
            rows += _with_words([dict(r, noise=sd) for r in study_effects(sc["name"], f, sc["reference"], results)],
                                f, results, spec)
    cols = ["study", "change", "reference", "loss", "reference_loss", "delta", "seeds", "verdict", "device",
            "full_delta", "coverage", "reference_coverage", "judged_on", "judged_delta", "reference_seeds",
            "noise", "words", "where", "fields"]
    return pd.DataFrame(rows, columns=cols)


def run_config(results: pd.DataFrame, run_hash: str) -> dict | None:
    """The config a run trained with (its config.json), or None where the ledger lacks the run's folder."""
    d = results.loc[results["hash"] == run_hash, "dir"]
    if d.empty or not isinstance(d.iloc[0], str) or not (Path(d.iloc[0]) / "config.json").exists():
        return None
    return ledger.read_json(Path(d.iloc[0]) / "config.json")["config"]


def field_words(field: str, value) -> str:
    """One config field's value in words (report/text.yml: change_words.fields)."""
    t = TEXT["change_words"]["fields"].get(field)
    if isinstance(t, dict):
        t = t.get(str(value), t.get("other"))
    if t is None:
        return f"{field.replace('_', ' ')} {value}"
    k = round(value / 1024) if isinstance(value, int) and not isinstance(value, bool) else value
    return t.format(v=f"{value:g}" if isinstance(value, float) else value, k=k)


def changed_fields(cfg: dict, ref: dict) -> dict:
    """{field: value} of `cfg` where it differs from `ref` (see `change_words`)."""
    defaults = {f.name: f.default for f in fields(Config)}
    cfg, ref = {**defaults, **cfg}, {**defaults, **ref}
    diff = {k: v for k, v in cfg.items() if k not in TEXT["change_words"]["ignore"] and ref.get(k) != v}
    if "d_model" in diff:
        diff.pop("n_head", None)
    return diff


def change_words(cfg: dict, ref: dict) -> str:
    """What a run changes against its reference, in words: the fields whose values differ (a field that a later
    code version added is absent from an older run's config and reads as its default, which keeps the old
    behaviour; a width's head count follows it and is not named); more than `max_fields` of them read as the
    round's kept changes."""
    w = TEXT["change_words"]
    diff = changed_fields(cfg, ref)
    if len(diff) > w["max_fields"]:
        return w["many"].format(n=len(diff))
    return ", ".join(field_words(k, v) for k, v in diff.items()) or "no setting changed"


def label_words(frame: pd.DataFrame, results: pd.DataFrame, ref: str) -> dict[str, str]:
    """{label: the change in words} for each point of a study frame against its point `ref` (seed copies
    "<label>-s<seed>" fold into their label); a label whose runs the ledger lacks keeps its name."""
    base = frame["label"].str.replace(r"-s\d+$", "", regex=True)
    first = frame.assign(base=base).drop_duplicates("base").set_index("base")["hash"]
    cb = run_config(results, first[ref]) if ref in first.index else None
    out = {}
    for label, h in first.items():
        ca = run_config(results, h)
        out[label] = change_words(ca, cb) if ca is not None and cb is not None and label != ref else label
    return out


def _with_words(rows: list[dict], frame: pd.DataFrame, results: pd.DataFrame, spec: dict) -> list[dict]:
    """Each finding's change in words (its first run's config against its reference's) and its study in words
    (studies.yml: words)."""
    def first_hash(label: str) -> str | None:
        h = frame.loc[frame["label"].str.replace(r"-s\d+$", "", regex=True) == label, "hash"]
        return h.iloc[0] if len(h) else None
    for r in rows:
        a, b = first_hash(r["change"]), first_hash(r["reference"])
        ca, cb = (run_config(results, a) if a else None), (run_config(results, b) if b else None)
        r["words"] = change_words(ca, cb) if ca is not None and cb is not None else r["change"]
        r["fields"] = ({k: (v, {**{f.name: f.default for f in fields(Config)}, **cb}.get(k))
                        for k, v in changed_fields(ca, cb).items()} if ca is not None and cb is not None else {})
        r["where"] = (spec.get("words") or {}).get(r["study"], r["study"])
    return rows


def seed_table(screen: pd.DataFrame, ref: str, labels: list[str], base_loss: float) -> tuple[str, dict]:
    """Candidates over seeds in one screen: mean, std, range, difference and exact p against `ref`, ratio."""
    ok = screen[screen["status"] == "finished"]
    r = ok.loc[ok["label"] == ref, "final_val_loss"].tolist()
    rows, info = [], {}
    for label in labels:
        xs = ok.loc[ok["label"] == label, "final_val_loss"].tolist()
        if not xs:
            continue
        s = pd.Series(xs)
        p = permutation_p(xs, r) if label != ref else None
        delta = float(s.mean() - pd.Series(r).mean()) if r else None
        info[label] = {"n": len(xs), "mean": float(s.mean()), "std": float(s.std()) if len(xs) > 1 else None,
                       "delta": delta, "p": p, "ratio": float(s.mean() / base_loss)}
        rows.append({"candidate": label, "seeds": str(len(xs)), "mean loss": fmt_loss(s.mean()),
                     "std": fmt_loss(s.std()) if len(xs) > 1 else "",
                     "range": f"{fmt_loss(s.min())} to {fmt_loss(s.max())}",
                     f"vs {ref} (%)": "" if label == ref or delta is None else f"{100 * delta / pd.Series(r).mean():+.2f}",
                     "p": "" if p is None else f"{p:.2f}", "ratio": fmt_ratio(s.mean() / base_loss)})
    md = md_table(pd.DataFrame(rows), "lrrrrrrr") if rows else ""
    return md, info


def test_table(results: pd.DataFrame, tests: pd.DataFrame, base: pd.Series,
               groups: dict[str, list[str]]) -> pd.DataFrame:
    """Per candidate (mean over its runs): validation and test ratios to the same baseline run on the same
    text; the gap says how much of the validation gain is selection."""
    def loss_of(hashes: list[str], kind: str, col: str = "official") -> float:
        t = tests[(tests["hash"].isin(hashes)) & (tests["test_set"] == kind)]
        return float(t[col].mean()) if len(hashes) and len(t) == len(hashes) else float("nan")

    def ratio(hashes: list[str], kind: str, col: str = "official") -> str:   # "" where either side is missing
        x, xb = loss_of(hashes, kind, col), loss_of([base["hash"]], kind, col)
        return "" if is_nan(x) or is_nan(xb) else fmt_ratio(x / xb)
    rows = []
    for label, hashes in groups.items():
        val = results.loc[results["hash"].isin(hashes), "final_val_loss"].mean()
        rows.append({"candidate": label, "runs": str(len(hashes)), "validation": fmt_loss(val),
                     "val ratio": fmt_ratio(val / base["final_val_loss"]),
                     "test:random": fmt_loss(loss_of(hashes, "random")), "random ratio": ratio(hashes, "random"),
                     "test:late": fmt_loss(loss_of(hashes, "late")), "late ratio": ratio(hashes, "late"),
                     "random ratio, full coverage": ratio(hashes, "random", "full")})
    return pd.DataFrame(rows)


def cpu_groups(runs: pd.DataFrame) -> dict[str, list[str]]:
    """{"<point> (CPU)": hashes}: a point's seeds (runs named "<point>-seed<N>") are one row of the test table."""
    groups: dict[str, list[str]] = {}
    for r in runs.itertuples():
        parts = re.sub(r"-seed[0-9]+$", "", r.run).split("-")   # <profile>-<study>-<point>, or <profile>-<preset>
        groups.setdefault(f"{'-'.join(parts[2:]) or parts[-1]} (CPU)", []).append(r.hash)
    return groups


def stack_table(recs: dict[str, dict], results: pd.DataFrame, spec: dict, base_loss: float,
                words: bool = False) -> tuple[str, dict]:
    """A stack over seeds against its reference's seeds (difference, exact p), and the stack less one member
    ("<label>-minus-<knob>", one seed each) against the stack's mean and its same-seed run."""
    ref_spec = spec["reference"]
    if spec["study"] not in recs or ref_spec["study"] not in recs:
        return "", {}
    st = fold_seed_labels(study_frame(recs[spec["study"]], results))
    rf = fold_seed_labels(study_frame(recs[ref_spec["study"]], results))
    st, rf = st[st["status"] == "finished"], rf[rf["status"] == "finished"]
    ref = rf.loc[rf["label"] == ref_spec["label"], "final_val_loss"].tolist()
    stack = st.loc[st["label"] == spec["label"], "final_val_loss"].tolist()
    if len(ref) < 2 or len(stack) < 2:
        return "", {}
    r, k = pd.Series(ref), pd.Series(stack)
    p = permutation_p(stack, ref)
    members = {kk: v for kk, v in st.loc[st["label"] == spec["label"], "overrides"].iloc[0].items()
               if kk != "train_seed"}
    rows = [{"runs": ref_spec["label"], "seeds": str(len(r)), "loss": fmt_loss(r.mean()), "std": fmt_loss(r.std()),
             "against": "", "difference (%)": "", "same seed": "", "p": "", "ratio": fmt_ratio(r.mean() / base_loss)},
            {"runs": spec["label"], "seeds": str(len(k)), "loss": fmt_loss(k.mean()), "std": fmt_loss(k.std()),
             "against": ref_spec["label"], "difference (%)": f"{100 * (k.mean() / r.mean() - 1):+.2f}", "same seed": "",
             "p": f"{p:.2f}", "ratio": fmt_ratio(k.mean() / base_loss)}]
    by_seed = st[st["label"] == spec["label"]].set_index("seed")["final_val_loss"]
    minus, paired = {}, {}
    prefix = f"{spec['label']}-minus-"
    for row in st[st["label"].str.startswith(prefix)].itertuples():
        name = row.label.removeprefix(prefix)
        minus[name] = float(row.final_val_loss - k.mean())
        paired[name] = float(row.final_val_loss - by_seed[row.seed]) if row.seed in by_seed.index else math.nan
        rows.append({"runs": row.label, "seeds": "1", "loss": fmt_loss(row.final_val_loss), "std": "",
                     "against": spec["label"], "difference (%)": f"{100 * minus[name] / k.mean():+.2f}",
                     "same seed": "" if is_nan(paired[name]) else f"{100 * paired[name] / k.mean():+.2f}", "p": "",
                     "ratio": fmt_ratio(row.final_val_loss / base_loss)})
    if words:   # "stack-minus-ema0.99" read as what it changes against the stack ("no weight EMA")
        w = label_words(st, results, spec["label"])
        for row in rows[2:]:
            row["runs"] = f"the stack with {w.get(row['runs'], row['runs'])}"
    numbers = {"reference_mean": float(r.mean()), "reference_std": float(r.std()), "mean": float(k.mean()),
               "std": float(k.std()), "delta": float(k.mean() - r.mean()), "p": p, "members": members,
               "minus": minus, "minus_same_seed": paired, "separated": bool(max(stack) < min(ref))}
    return md_table(pd.DataFrame(rows), "lrrrlrrrr"), numbers


def by_cost(rec: dict, results: pd.DataFrame, base_loss: float, ref_label: str) -> tuple[str, dict]:
    """A screen's points by matmul cost against the reference (`relative_cost`): mean over seeds, difference and
    exact p against the reference's seeds, sorted by cost then loss; empty under two reference seeds."""
    f = fold_seed_labels(study_frame(rec, results))
    f = f[f["status"] == "finished"]
    base = {k: v for k, v in rec["specs"][-1]["base"].items() if k != "preset"}
    preset = rec["specs"][-1]["base"].get("preset", "baseline")
    ref_cfg = make_config("full", preset, **base)
    ref = f.loc[f["label"] == ref_label, "final_val_loss"].tolist()
    if len(ref) < 2:
        return "", {}
    rm = sum(ref) / len(ref)
    rows, pts = [], {}
    for label, g in f.groupby("label", sort=False):
        ov = {k: v for k, v in g["overrides"].iloc[0].items() if k != "train_seed"}
        cfg = make_config("full", preset, **{**base, **ov})
        cost = relative_cost(cfg, ref_cfg)
        v = g["final_val_loss"].tolist()
        m = sum(v) / len(v)
        p = permutation_p(v, ref) if label != ref_label else None
        pts[label] = {"cost": cost, "mean": m, "seeds": len(v), "delta": m - rm, "p": p, "ratio": m / base_loss,
                      "std": float(pd.Series(v).std()) if len(v) > 1 else None, "overrides": ov,
                      "words": change_words(cfg.to_dict(), ref_cfg.to_dict())}
        rows.append({"change": label, "cost": f"{cost:.2f}x", "parameters": f"{g['n_params'].iloc[0] / 1e6:.2f}M",
                     "seeds": str(len(v)), "loss": fmt_loss(m),
                     "std": f"{pd.Series(v).std():.4f}" if len(v) > 1 else "",
                     "difference (%)": "" if label == ref_label else f"{100 * (m / rm - 1):+.2f}",
                     "p": "" if p is None else f"{p:.2f}", "ratio": fmt_ratio(m / base_loss)})
    rows.sort(key=lambda r: (pts[r["change"]]["cost"], pts[r["change"]]["mean"]))
    return md_table(pd.DataFrame(rows), "lrrrrrrrr"), {"reference": ref_label, "points": pts}


def agreement_table(screen: pd.DataFrame, proxies: dict[str, pd.DataFrame], ref: str,
                    words: dict[str, str] | None = None) -> tuple[str, dict]:
    """The proxy studies' deltas beside the screen's for the changes they made: same sign, and whether the
    full-scale effect is beyond twice the reference's seed std; a change printed as `words` gives it."""
    sign = {True: "yes", False: "no"}
    out, numbers = None, {}
    for name, frame in proxies.items():
        changes = [c for c in dict.fromkeys(fold_seed_labels(frame)["label"]) if c != ref]
        table, s = agreement(screen, frame, changes, ref)
        if table.empty:
            continue
        numbers[name] = dict(s)
        t = table.set_index("change")
        if out is None:
            out = pd.DataFrame({"change": table["change"],
                                "full scale (%)": (100 * table["full"] / s["full_reference"]).map(lambda x: f"{x:+.2f}")})
            clear = t["full_clear"]
        out[f"{name} (%)"] = [f"{100 * t.loc[c, 'quick'] / s['quick_reference']:+.2f}" if c in t.index else ""
                              for c in out["change"]]
        out[f"same sign ({name})"] = [sign[bool(t.loc[c, "same_sign"])] if c in t.index else ""
                                      for c in out["change"]]
    if out is None:
        return "", {}
    out["beyond 2 std at full scale"] = [sign[bool(clear[c])] for c in out["change"]]
    out["change"] = [(words or {}).get(c, c) for c in out["change"]]
    return md_table(out, "lr" + "rl" * len(numbers) + "l"), numbers


def truncation_table(screen: pd.DataFrame, results: pd.DataFrame, ref: str, skip: list[str]) -> tuple[str, dict]:
    """Does stopping a screen's runs early rank the changes as their ends do? (`stats.truncation_agreement`)."""
    ri = results.drop_duplicates("hash").set_index("hash")
    curves = {h: read_curve(ri.loc[h, "dir"]).assign(epochs=ri.loc[h, "epochs"], max_steps=ri.loc[h, "max_steps"],
                                                     evals_per_epoch=ri.loc[h, "evals_per_epoch"])
              for h in screen["hash"] if h in ri.index and isinstance(ri.loc[h, "dir"], str)}
    table, s = truncation_agreement(screen, curves, ref, tuple(skip))
    if table.empty:
        return "", {}
    t = pd.DataFrame({"epoch": table["epoch"].map(lambda x: f"{x:g}"),
                      "share of the run": table["fraction"].map(lambda x: f"{x:.0%}"),
                      "pairs": table["pairs"].astype(str),
                      "same sign": table["sign_agreement"].map(lambda x: f"{x:.0%}"),
                      "same sign, clear": table["clear_sign_agreement"].map(
                          lambda x: "" if is_nan(x) else f"{x:.0%}"),
                      "Spearman": table["spearman"].map(lambda x: f"{x:.2f}")})
    numbers = {k: v for k, v in s.items() if k not in ("deltas", "clear")}
    numbers["table"] = table.to_dict(orient="records")
    return md_table(t, "rrrrrr"), numbers
