"""The report's inputs, written by `write_report_inputs(profile)` (notebook 05) to `analysis_dir(profile)`: figures
(fig-*.png), markdown tables and paragraphs (*.md, from `report_text`), numbers.json (every number) and
variables.yml (those report.qmd quotes). Which studies are which is data: report/studies.yml. Nothing trains."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import ledger, plots
from .ledger import repo_root
from .formats import millions, is_nan, plain, fmt_bpc, fmt_int, fmt_loss, fmt_ratio, md_table, rounded
from .config import CPU_BUDGET_S, PUBLISHED_BASELINE
from .report_text import (DEVICE_NAME, TEXT, agreement_table, baselines_md,
                          by_cost, changes_table, code_versions_md, cpu_groups, edges_md, findings, findings_md,
                          formatted, ladder_table, results_table, say, screen_frame, seed_table, setup_md,
                          stack_table, summary_md, test_table, truncation_table, vs_previous, label_words)
from .presets import LADDER
from .stats import (chance_calls, coverage_check, deltas, fold_seed_labels, permutation_floor, permutation_p,
                    sign_test_p, time_to_quality)
from .studies import STUDY_PROFILE, by_point
from .tables import (analysis_dir, ladder_frame, load_results, pending_baseline,
                     read_curve, read_lr, read_stability, read_studies, read_tests, recorded, run_dir, study_frame)


def read_study_roles(path: Path | None = None) -> dict[str, Any]:
    """report/studies.yml: which recorded studies the report reads, and as what (an empty dict if absent)."""
    path = path or repo_root() / "report" / "studies.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def write_report_inputs(profile: str, roles: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every figure, table and number the report uses; returns numbers.json's content (`roles`: which
    studies are which, default report/studies.yml)."""
    roles = read_study_roles() if roles is None else roles
    out = analysis_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    save = lambda fig, name: plots.save(fig, out / name, close=True)   # noqa: E731
    results = load_results(profile)
    if results.empty or not results["is_baseline"].any():
        raise RuntimeError(f"the {profile} ledger ({ledger.results_root(profile)}) has no finished baseline run; "
                           f"run notebooks/01_baseline.ipynb first")
    ladder = ladder_frame(profile, results)
    proxy = STUDY_PROFILE[profile]   # the sweeps ran on the study profile (the quick proxy under full)
    proxy_results = results if proxy == profile else load_results(proxy)
    studies = ({k: study_frame(v, proxy_results) for k, v in read_studies(proxy).items()}
               if len(proxy_results) else {})
    recs = read_studies(profile)
    done = ladder.dropna(subset=["final_val_loss"])
    bases = results[results["is_baseline"]]
    same = bases[bases["device"] == (done.iloc[-1]["device"] if len(done) else "cpu")]
    base = (same if len(same) else bases).iloc[0]   # the baseline on the final run's device, if it has one
    final = done.iloc[-1] if len(done) else base
    provisional = base["device"] != final["device"]
    proxy_roles = roles.get("proxy") or {}

    staged = ladder.dropna(subset=["dir"])
    save(plots.validation_curves({s.stage: read_curve(s.dir) for s in staged.itertuples()},
                                 budget_min=CPU_BUDGET_S / 60 if profile == "full" else None,
                                 baseline_loss=base["final_val_loss"]), "fig-curves.png")
    configs = {s.stage: ledger.read_json(Path(s.dir) / "config.json")["config"] for s in staged.itertuples()}
    save(plots.lr_schedules({s.stage: read_lr(s.dir) for s in staged.itertuples()},
                            muon_lr={k: c["muon_lr"] for k, c in configs.items() if c.get("optimizer") == "muon"}),
         "fig-lr.png")
    sweep, seeds = studies.get(proxy_roles.get("sweep")), studies.get(proxy_roles.get("seeds"))
    (out / "sweep_edges.md").write_text(edges_md(sweep))
    full_seeds = []   # the rungs' seeds at full scale, beside the proxy's candidates
    for r in LADDER if proxy != profile else []:   # a rung's study may also hold the rung before as its reference
        if r["study"] in recs:
            f = study_frame(recs[r["study"]], results)
            full_seeds.append(f[f["label"] == r["rung"]].assign(label=f"{r['rung']} ({profile} scale)"))
    seed_frame = (pd.concat(([] if seeds is None else [seeds]) + full_seeds, ignore_index=True) if full_seeds
                  else seeds)
    band = None   # the proxy's base candidate over its seeds: the sensitivity figure's noise band
    if seeds is not None and "base" in (st := by_point(seeds)).index and st.loc["base", "seeds"] > 1:
        band = (st.loc["base", "loss_mean"], st.loc["base", "loss_std"])
    save(plots.sensitivity(sweep if sweep is not None else pd.DataFrame(), band, seeds, proxy=proxy),
         "fig-sensitivity.png")

    (out / "results.md").write_text(md_table(results_table(results, profile), "lrrrrrrl"))
    (out / "ladder.md").write_text(md_table(ladder_table(ladder), "llrrrrrrr"))
    (out / "changes.md").write_text(md_table(changes_table(ladder, profile), "ll", min_dashes=40))
    cov = coverage_check(ladder)
    (out / "coverage.md").write_text(md_table(pd.DataFrame({
        "stage": cov["stage"], "vocabulary": cov["vocab"].map(fmt_int),
        "official coverage": cov["coverage"].map(lambda x: f"{x:.1%}"),
        "step-1 loss": cov["step1_loss"].map(fmt_loss), "uniform expectation": cov["uniform_loss"].map(fmt_loss),
        "ratio": cov["ratio"].map(lambda x: f"{x:.3f}")})))
    seed_info = _seeds_section(seed_frame, out)
    if full_seeds:
        save(plots.seed_spread(seed_frame[seed_frame["label"].str.endswith("scale)")]), "fig-seeds.png")
    (out / "gpu.md").write_text(gpu_section(profile, results, out, proxy_results, roles))
    (out / "search.md").write_text(search_section(proxy, studies, out, proxy_roles.get("search_reference")))
    files, screens = screens_section(profile, results, proxy_results, out, roles)
    for name, text in files.items():
        (out / name).write_text(text)
    found = _findings(profile, proxy, results, proxy_results, recs, roles, seed_info, screens)
    (out / "findings.md").write_text(findings_md(found))
    full_scale = found[~found["scale"].astype(str).str.startswith("on the")] if "scale" in found else found
    if len(full_scale):
        save(plots.forest(full_scale.assign(scale=full_scale.get("scale", "every scale"))), "fig-forest.png")
    stability = stability_section(out, roles)
    extra = seed_plan_sections(profile, out, roles, found, results, seed_frame, base)
    steps = _story_steps(profile, results, done, base, roles)
    if len(steps) > 1:
        save(plots.story(steps), "fig-story.png")

    numbers = {
        "profile": profile, "n_runs": int((results["status"] == "finished").sum()),
        "story": steps.to_dict(orient="records"),
        "baseline": _run_numbers(base), "final": _run_numbers(final),
        "final_stage": final["stage"] if "stage" in final.index else "baseline",
        "ratio": float(final["final_val_loss"] / base["final_val_loss"]),
        # the same ratio on the loss that scores every validation token (the official spans score a
        # different share of the text under different tokenizers)
        "ratio_full_coverage": plain(pd.to_numeric(final.get("full_val_bpc"), errors="coerce")
                                     / pd.to_numeric(base.get("full_val_bpc"), errors="coerce")),
        "ratio_provisional": bool(provisional),
        "baseline_device": base["device"], "final_device": final["device"],
        "pending_baseline": pending_baseline(results, final["device"]) if provisional else None,
        "time_to_baseline_s": time_to_quality(final["dir"], base["final_val_loss"]),
        "seeds": seed_info,
        "final_seeds": _stage_seeds(seed_frame, final, base, results, profile),
        "best_single": _best_rung(done, base, single=True),
        "best_in_budget": _best_rung(done, base, budget_s=CPU_BUDGET_S),
        "screens": screens,
        "stability": stability,
        **extra,
        "formatted": {"baseline_loss": fmt_loss(base["final_val_loss"]),
                      "final_loss": fmt_loss(final["final_val_loss"]),
                      "ratio": fmt_ratio(final["final_val_loss"] / base["final_val_loss"]),
                      "baseline_bpc": fmt_bpc(base["full_val_bpc"]), "final_bpc": fmt_bpc(final["full_val_bpc"])},
    }
    (out / "summary.md").write_text(summary_md(numbers, final, base) + baselines_md(numbers, results))
    (out / "setup.md").write_text(setup_md(results, base, profile))
    (out / "code-versions.md").write_text(code_versions_md(results))
    (out / "profile.md").write_text(say(f"profile_note.{profile}", proxy=proxy) + "\n")
    for name, what in TEXT["figures"].items():   # each figure of the report exists, if only to say it lacks data
        if not (out / name).exists():
            save(plots.placeholder(what), name)
    (out / "variables.yml").write_text(yaml.safe_dump({"v": report_variables(numbers)}, sort_keys=True,
                                                      width=1000))
    # rounded: the file must come out byte-identical on every host (see formats.SIG_DIGITS)
    (out / "numbers.json").write_text(json.dumps(rounded(numbers), indent=2, default=str) + "\n")
    return numbers


def _findings(profile: str, proxy: str, results: pd.DataFrame, proxy_results: pd.DataFrame, recs: dict,
              roles: dict[str, Any], seed_info: dict, screens: dict) -> pd.DataFrame:
    """Every one-change finding with its scale and the seed std it is judged against (its screen's reference,
    else the scale's seeds); the full-scale findings (GPU first), then the proxy's."""
    found = findings(recs, results, roles)
    proxy_noise = (seed_info.get("base") or {}).get("std")
    if proxy == profile:
        return found.assign(noise=proxy_noise)
    noise = {"cpu": (seed_info.get(f"final ({profile} scale)") or {}).get("std"),
             "cuda": ((screens.get("candidates") or {}).get("final") or {}).get("std")
             or small_models(profile, results, roles)[1].query("seeds >= 2")["std"].mean()}
    found["scale"] = [f"at {profile} scale on the {DEVICE_NAME.get(d, d)}" if d else f"at {profile} scale"
                      for d in found["device"]]
    found["noise"] = [n if n is not None and not is_nan(n) else noise.get(d)
                      for n, d in zip(found["noise"], found["device"])]
    found = found.sort_values("scale", kind="stable", key=lambda s: s.astype(str).str.contains("CPU"))  # GPU first
    if len(proxy_results):
        proxy_found = findings(read_studies(proxy), proxy_results, roles).assign(
            scale=f"on the {proxy} proxy", noise=proxy_noise)
        found = pd.concat([found, proxy_found], ignore_index=True)
    return found


def _stage_seeds(seeds: pd.DataFrame | None, final: pd.Series, base: pd.Series, results: pd.DataFrame,
                 profile: str) -> dict[str, Any] | None:
    """The last rung's seeds at full scale (its "<stage> (<profile> scale)" rows): mean, spread, ratio, wall
    times; None under two finished seeds."""
    if seeds is None or "stage" not in final.index:
        return None
    ok = seeds[(seeds["label"] == f"{final['stage']} ({profile} scale)") & (seeds["status"] == "finished")]
    if len(ok) < 2:
        return None
    runs = results.drop_duplicates("hash").set_index("hash").loc[ok["hash"]]
    walls = runs["wall_time_s"].astype(float)
    loss = ok["final_val_loss"].astype(float)
    out = {"n": len(ok), "mean": float(loss.mean()), "std": float(loss.std()),
           "ratio": float(loss.mean() / base["final_val_loss"]), "wall_min_s": float(walls.min()),
           "wall_max_s": float(walls.max()), "over_budget": int((walls > CPU_BUDGET_S).sum())}
    if "tokens_per_s" in runs.columns:   # the seeds train the same steps: their speeds say how the times differ
        tps = runs["tokens_per_s"].astype(float)
        if tps.notna().all():
            out.update(tps_min=float(tps.min()), tps_max=float(tps.max()))
    return out


def _best_rung(ladder: pd.DataFrame, base: pd.Series, single: bool = False,
               budget_s: float | None = None) -> dict[str, Any] | None:
    """The finished rung with the lowest loss on the baseline's device: only single models (`single`), or only
    runs within `budget_s` on the baseline's kind of processor."""
    kind = lambda hw: hw.split(" (")[0] if isinstance(hw, str) else None   # noqa: E731  the CPU model
    ok = ladder[ladder["device"] == base["device"]]
    if single:
        ok = ok[ok["stage"].isin([r["rung"] for r in LADDER if r["single"]])]
    if budget_s is not None:
        ok = ok[(ok["hardware"].map(kind) == kind(base["hardware"])) & (ok["wall_time_s"] <= budget_s)]
    if ok.empty:
        return None
    b = ok.loc[ok["final_val_loss"].idxmin()]
    return {"rung": b["stage"], "loss": float(b["final_val_loss"]),
            "ratio": float(b["final_val_loss"] / base["final_val_loss"]), "wall_time_s": float(b["wall_time_s"]),
            "hardware": kind(b["hardware"]), "precision": b["precision"]}


def _run_numbers(row: pd.Series) -> dict[str, Any]:
    keys = ("run", "hash", "final_val_loss", "full_val_bpc", "n_params", "wall_time_s", "paused_s", "tokens_per_s",
            "official", "wall_time_raw_s", "tokens_per_s_raw")
    out = {k: plain(row.get(k)) for k in keys}
    # a count stays an integer: an unfinished run in the ledger (no n_params yet) makes the column float
    if isinstance(out["n_params"], float) and out["n_params"].is_integer():
        out["n_params"] = int(out["n_params"])
    return out


def _seeds_section(seeds: pd.DataFrame | None, out: Path) -> dict[str, Any]:
    """seeds.md (per candidate: mean, std, range) and seeds_test.md: the p between the first two candidates,
    and each full-scale rung against the one before it."""
    if seeds is None or seeds.empty:
        (out / "seeds.md").write_text(say("seeds.none"))
        (out / "seeds_test.md").write_text("\n")
        return {}
    st = by_point(seeds)
    (out / "seeds.md").write_text(md_table(pd.DataFrame({
        "candidate": st.index, "seeds": st["seeds"].astype(int), "mean loss": st["loss_mean"].map(fmt_loss),
        "std": st["loss_std"].map(fmt_loss), "min": st["loss_min"].map(fmt_loss),
        "max": st["loss_max"].map(fmt_loss)})))
    info: dict[str, Any] = {k: {"n": int(r["seeds"]), "mean": plain(r["loss_mean"]), "std": plain(r["loss_std"])}
                            for k, r in st.iterrows()}
    ok = seeds[seeds["status"] == "finished"]
    losses = {k: ok.loc[ok["label"] == k, "final_val_loss"].tolist() for k in st.index}
    labels = list(st.index)
    note = say("seeds.no_test")
    if len(labels) >= 2:
        info["p_value"] = p = permutation_p(losses[labels[0]], losses[labels[1]])
        if p is not None:
            note = say("seeds.test", a=labels[0], b=labels[1], p=p)
    rungs = [k for k in labels if re.fullmatch(r"final\d* \(.+ scale\)", k)]   # final, final2, ... at full scale
    for before, after in zip(rungs, rungs[1:]):  # each later rung against the one before it
        a, b = losses[before], losses[after]
        p = permutation_p(b, a)
        d = sum(b) / len(b) - sum(a) / len(a)
        info[f"{after.split()[0]}_vs_{before.split()[0]}"] = {"delta": d, "p": p, "n": [len(a), len(b)]}
        # each rung's seed count and spread named beside it (they were once printed in swapped order)
        each = "; ".join(f"{k}: {len(xs)} seed{'s' if len(xs) > 1 else ''}"
                         + (f", std {st.loc[k, 'loss_std']:.4f}" if len(xs) > 1 else "")
                         for k, xs in ((after, b), (before, a)))
        note += say("seeds.rung", after=after, before=before, delta=d / (sum(a) / len(a)), each=each) + (
            say("seeds.rung_p", p=p, n_after=len(b), n_before=len(a), floor=permutation_floor(len(b), len(a)))
            if p is not None else say("seeds.rung_no_p"))
    (out / "seeds_test.md").write_text(note)
    return info


def gpu_ladder(profile: str, results: pd.DataFrame, roles: dict[str, Any]) -> pd.DataFrame | None:
    """The seed plan's ladder at full scale on the GPU (roles["gpu"]["ladder"]): one finished run a rung."""
    lad = recorded(profile, (roles.get("gpu") or {}).get("ladder"), results)
    return None if lad is None else lad[lad["status"] == "finished"].drop_duplicates("label")


def small_models(profile: str, results: pd.DataFrame, roles: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The small models at full scale on the GPU (roles["gpu"]["small"]): their runs, and their means over
    seeds (loss, std, seeds, bpc, params, ratio), best first."""
    pts = screen_frame(read_studies(profile), results, (roles.get("gpu") or {}).get("small", []))
    pts = pts[pts["status"] == "finished"] if len(pts) else pts
    if pts.empty:
        return pts, pd.DataFrame(columns=["loss", "std", "seeds", "bpc", "params", "ratio"])
    stats = pts.groupby("label", sort=False).agg(
        loss=("final_val_loss", "mean"), std=("final_val_loss", "std"), seeds=("final_val_loss", "size"),
        bpc=("full_val_bpc", "mean"), params=("n_params", "first"), ratio=("ratio_to_baseline", "mean"))
    return pts, stats.sort_values("loss")


def gpu_section(profile: str, results: pd.DataFrame, out: Path, proxy_results: pd.DataFrame | None,
                roles: dict[str, Any]) -> str:
    """The full-scale studies of a lent GPU (roles["gpu"]): markdown, fig-gpu-curves.png and fig-overfit.png."""
    g = roles.get("gpu") or {}
    gpu = (results[(results.get("device") == "cuda") & (results["status"] == "finished")] if len(results)
           else results)
    recs = {k: v for k, v in read_studies(profile).items() if k in g.get("studies", [])}
    if gpu.empty or not recs:
        return say("gpu.none")
    dirs = results.drop_duplicates("hash").set_index("hash")["dir"]
    base = gpu[gpu["is_baseline"]]
    base_loss = base["final_val_loss"].iloc[0] if len(base) else float("nan")
    parts = [say("gpu.intro", hardware=" and ".join(sorted(set(gpu["hardware"].dropna().str.split(" (", regex=False)
                                                                 .str[0]))), loss=fmt_loss(base_loss))]
    shown = {}   # the curves of fig-gpu-curves.png: name -> run hash
    lad = gpu_ladder(profile, results, roles)
    early: list[str] = []   # the rungs whose lowest evaluation came before their last
    if lad is not None and len(lad):
        losses = [read_curve(dirs[h]).set_index("step")["loss"] for h in lad["hash"]]
        early = [r for r, c in zip(lad["label"], losses) if c.idxmin() < c.index.max()]
        t = pd.DataFrame({"rung": lad["label"], **formatted(lad, "official loss"),
                          "vs previous": vs_previous(lad["final_val_loss"]),
                          **formatted(lad, "ratio", "full bits/char"),
                          "lowest loss (step)": [f"{c.min():.4f} ({c.idxmin()})" for c in losses],
                          **formatted(lad, "params", "tokens/s")})
        sizes = lad["n_params"].map(millions)
        other = [f"{r} {m}" for r, m in zip(lad["label"], sizes) if m != sizes.iloc[0]]
        parts += [md_table(t, "llrrrrrr"),
                  say("gpu.ladder", size=sizes.iloc[0], others=f"; {', '.join(other)}" if other else "")]
        shown.update({f"{r.label} ({millions(r.n_params)})": r.hash for r in lad.itertuples()})
    pts, stats = small_models(profile, results, roles)
    if len(pts):
        t = pd.DataFrame({
            "model": stats.index, "official loss": stats["loss"].map(fmt_loss),
            "seed std": [("" if n < 2 else f"{sd:.4f}") for sd, n in zip(stats["std"], stats["seeds"])],
            "seeds": stats["seeds"].astype(int), "ratio": stats["ratio"].map(fmt_ratio),
            "full bits/char": stats["bpc"].map(fmt_bpc), "params": stats["params"].map(fmt_int)})
        parts += [md_table(t, "lrrrrrr"), say("gpu.small")]
        top = pts[pts["label"] == stats.index[0]].iloc[0]
        shown[f"small model {top['label']} ({millions(top['n_params'])})"] = top["hash"]
    abl = study_frame(recs[g["ablation"]], results) if g.get("ablation") in recs else None
    if abl is not None and len(abl):
        abl = abl[abl["status"] == "finished"].drop_duplicates("label")
        ref = abl.iloc[0]
        w = label_words(abl, results, ref["label"])
        t = pd.DataFrame({"change": [w.get(x, x) if x != ref["label"] else f"{x} (the reference)"
                                     for x in abl["label"]], **formatted(abl, "official loss"),
                          f"vs {ref['label']}": [f"{x / ref['final_val_loss'] - 1:+.2%}"
                                                 for x in abl["final_val_loss"]],
                          **formatted(abl, "full bits/char", "params")})
        parts += [md_table(t, "lrrrr"), say("gpu.ablate")]
    held = proxy_vs_full(profile, results, proxy_results, roles)
    if len(held):
        t = pd.DataFrame({"change": held["change"], "proxy": held["proxy"].map(lambda x: f"{x:+.1%}"),
                          "full scale": held["full"].map(lambda x: f"{x:+.1%}"), "where": held["where"],
                          "holds": held["holds"].map({True: "yes", False: "no"})})
        parts += [md_table(t, "lrrll"), say("gpu.proxy_vs_full")]
        if not held["holds"].all():
            why = (say("gpu.not_held_ladder", early=", ".join(early) or "none",
                       last=", ".join(r for r in lad["label"] if r not in early))
                   if lad is not None and len(lad) else ".")
            parts.append(say("gpu.not_held") + why + "\n")
    if shown:
        curves = {k: read_curve(dirs[h]) for k, h in shown.items()}
        plots.save(plots.validation_curves(curves, title="full scale on the GPU", baseline_loss=base_loss),
                   out / "fig-gpu-curves.png", close=True)
        train = {k: read_curve(dirs[h], train=True) for k, h in shown.items()}
        plots.save(plots.train_vs_validation(curves, train), out / "fig-overfit.png", close=True)
        parts.append(say("gpu.curves"))
    return "\n".join(parts)


def search_section(proxy: str, studies: dict[str, pd.DataFrame], out: Path, reference: dict | None = None) -> str:
    """The TPE search of notebook 04 on the proxy: a paragraph, the best trials and fig-search.png ("" if none)."""
    from . import search   # optuna: imported only where a search was recorded

    name = next((k for k, f in studies.items() if (f["axis"] == "search").any()), None)
    if name is None or not search.storage_path(proxy, name).exists():
        return ""
    hist = search.history(proxy, name)
    done = hist[hist["state"] == "COMPLETE"].sort_values("value")
    if done.empty:
        return ""
    plots.save(plots.search_history(hist, title=f"{proxy}: TPE search"), out / "fig-search.png", close=True)
    ref = studies.get((reference or {}).get("study"))
    label = (reference or {}).get("label")
    ref_loss = by_point(ref).loc[label, "loss_mean"] if ref is not None and label in set(ref["label"]) else None
    params = {c: TEXT["settings"].get(c[len("param_"):], c[len("param_"):].replace("_", " "))
              for c in hist.columns if c.startswith("param_")}
    top = done.head(5)
    t = pd.DataFrame({"trial": top["label"], "official loss": top["value"].map(fmt_loss),
                      **{p: top[c].map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))
                         for c, p in params.items()}})
    n = hist["state"].value_counts()
    best = top["value"].iloc[0]
    text = (say("search.text", name=name, params=", ".join(params.values()), proxy=proxy, trials=len(hist),
                completed=int(n.get("COMPLETE", 0)), pruned=int(n.get("PRUNED", 0)), best=top["label"].iloc[0],
                loss=fmt_loss(best))
            + (say("search.against", ref_loss=fmt_loss(ref_loss), label=label, delta=best / ref_loss - 1)
               if ref_loss else "") + say("search.end"))
    return "\n".join([text, md_table(t), say("search.caption"), say("search.figure")])


def proxy_vs_full(profile: str, results: pd.DataFrame, proxy_results: pd.DataFrame | None,
                  roles: dict[str, Any]) -> pd.DataFrame:
    """Each change's relative effect on the proxy and at full scale: the GPU ladder's rungs (roles["gpu"]) each
    against the one before, and the ablations of roles["proxy_vs_full"] as the proxy change they take back;
    `holds`: the same sign."""
    proxy = STUDY_PROFILE[profile]
    rows: list[dict[str, Any]] = []
    if proxy != profile and proxy_results is not None and not proxy_results.empty:
        plad = ladder_frame(proxy, proxy_results).dropna(subset=["final_val_loss"])
        plad = plad.set_index("stage")["final_val_loss"]
        proxy_recs = read_studies(proxy)
        lad = gpu_ladder(profile, results, roles)
        if lad is not None:
            g = lad.set_index("label")
            names = [n for n in g.index if n in plad.index]
            rows += [{"change": f"{cur} (rung)", "proxy": plad[cur] / plad[prev] - 1,
                      "full": g.loc[cur, "final_val_loss"] / g.loc[prev, "final_val_loss"] - 1,
                      "where": f"GPU, {g.loc[cur, 'n_params'] / 1e6:.1f}M"} for prev, cur in zip(names, names[1:])]
        spec = roles.get("proxy_vs_full") or {}
        ref, a = spec.get("reference"), recorded(profile, spec.get("study"), results)
        if a is not None:
            ablation = a[a["status"] == "finished"].drop_duplicates("label").set_index("label")["final_val_loss"]
            for label, src in (spec.get("ablations") or {}).items():
                if label not in ablation.index or ref not in ablation.index or src["study"] not in proxy_recs:
                    continue
                f = study_frame(proxy_recs[src["study"]], proxy_results)
                d, mean, _ = deltas(f, [src["change"]], f["label"].iloc[0])
                if src["change"] in d:
                    rows.append({"change": f"{src['change']} ({ref} vs {label})", "proxy": d[src["change"]] / mean,
                                 "full": ablation[ref] / ablation[label] - 1, "where": f"CPU, {ref}"})
    out = pd.DataFrame(rows, columns=["change", "proxy", "full", "where"])
    return out.assign(holds=[(a > 0) == (b > 0) for a, b in zip(out["proxy"], out["full"])])


def screens_section(profile: str, results: pd.DataFrame, proxy_results: pd.DataFrame, out: Path,
                    roles: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The one-change screens of `roles` (candidates, test sets, stack, costs, agreement, truncation): writes
    fig-cost.png and fig-proxy.png; returns their markdown files (empty where the ledger lacks them), numbers."""
    recs = read_studies(profile)
    gpu_bases = results[results["is_baseline"] & (results["device"] == "cuda") & (results["status"] == "finished")]
    numbers: dict[str, Any] = {}
    files = {k: "" for k in ("screen-candidates.md", "tests.md", "stack.md", "agreement.md", "truncation.md")}
    screens = {sc["name"]: sc for sc in roles.get("screens", [])}
    frames = {name: screen_frame(recs, results, sc["studies"], sc.get("leave_out_prefix"))   # each read once
              for name, sc in screens.items()}
    cand = roles.get("candidates") or {}
    sc = screens.get(cand.get("screen"))
    frame = frames[sc["name"]] if sc else pd.DataFrame()
    if frame.empty or gpu_bases.empty:
        return files, numbers
    base = gpu_bases.iloc[0]
    base_loss = base["final_val_loss"]
    numbers["gpu_baseline"] = float(base_loss)
    files["screen-candidates.md"], numbers["candidates"] = seed_table(frame, sc["reference"], cand["labels"],
                                                                          base_loss)
    tests = read_tests(ledger.results_root(profile))
    groups = {"baseline (GPU)": [base["hash"]]}
    for row, (study, label) in (roles.get("tests") or {}).items():
        f = frames.get(study)
        if f is None and study in recs:
            f = fold_seed_labels(study_frame(recs[study], results))
        if f is not None:
            groups[row] = f.loc[(f["label"] == label) & (f["status"] == "finished"), "hash"].tolist()
    cpu_tested = results[results["hash"].isin(tests["hash"]) & (results["device"] == "cpu")]
    groups.update(cpu_groups(cpu_tested))
    groups = {k: v for k, v in groups.items() if v and tests["hash"].isin(v).any()}
    if len(groups) > 1:
        t = test_table(results, tests, base, groups)
        files["tests.md"] = md_table(t, "lrrrrrrrr")
        numbers["tests"] = t.to_dict(orient="records")
    if roles.get("stack"):
        files["stack.md"], numbers["stack"] = stack_table(recs, results, roles["stack"], base_loss, words=True)
    numbers["by_cost"] = {}
    for bc in roles.get("by_cost", []):
        if bc["study"] in recs:
            files[f"cost-{bc['study']}.md"], numbers["by_cost"][bc["study"]] = by_cost(
                recs[bc["study"]], results, base_loss, bc["reference"])
    if numbers["by_cost"]:
        words = {st: {k: p["words"] for k, p in bc["points"].items()} for st, bc in numbers["by_cost"].items()}
        plots.save(plots.cost_vs_loss(numbers["by_cost"], words, roles.get("words")), out / "fig-cost.png",
                   close=True)
    ag = roles.get("agreement") or {}
    if ag:
        full = frames[ag["screen"]]
        proxies, keys = {}, {}
        for px in ag.get("proxies", []):
            frame = recorded(px["profile"], px["study"], results if px["profile"] == profile else proxy_results)
            if frame is not None:
                proxies[px["name"]], keys[px["name"]] = frame, px["key"]
        files["agreement.md"], agree = agreement_table(full, proxies, ag["reference"],
                                                       label_words(full, results, ag["reference"]))
        numbers["agreement"] = {keys[name]: dict(a, name=name) for name, a in agree.items()}
        if proxies:
            plots.save(plots.proxy_scatter(full, proxies, ag["reference"]), out / "fig-proxy.png", close=True)
    tr = roles.get("truncation") or {}
    if tr:
        full = frames[tr["screen"]]
        files["truncation.md"], numbers["truncation"] = truncation_table(full, results, tr["reference"],
                                                                              tr.get("skip", []))
    return files, numbers


def _story_steps(profile: str, results: pd.DataFrame, done: pd.DataFrame, base: pd.Series,
                 roles: dict[str, Any]) -> pd.DataFrame:
    """The project's steps in order, each as a ratio to its own device's baseline: the GPU ladder's rungs, the
    best small model on the GPU, then the CPU ladder."""
    rows = []
    lad = gpu_ladder(profile, results, roles)
    if lad is not None:
        rows += [{"step": f"{r.label} (GPU, {millions(r.n_params)})", "ratio": float(r.ratio_to_baseline),
                  "device": "GPU", "loss": float(r.final_val_loss)} for r in lad.itertuples()]
        small, stats = small_models(profile, results, roles)
        if len(small):
            top = small[small["label"] == stats.index[0]].iloc[0]
            rows.append({"step": f"small model (GPU, {millions(top['n_params'])})",
                         "ratio": float(stats["loss"].iloc[0] / top["final_val_loss"] * top["ratio_to_baseline"]),
                         "device": "GPU", "loss": float(stats["loss"].iloc[0])})
    cpu = done[done["device"] == base["device"]]
    ensembles = {r["rung"] for r in LADDER if not r["single"]}
    rows += [{"step": f"{r.stage} ({'CPU' if r.device == 'cpu' else r.device}"
                      + (", ensemble)" if r.stage in ensembles else ")"),
              "ratio": float(r.final_val_loss / base["final_val_loss"]),
              "device": "CPU" if r.device == "cpu" else "GPU",
              "loss": float(r.final_val_loss)} for r in cpu.itertuples()]
    return pd.DataFrame(rows, columns=["step", "ratio", "device", "loss"])


def report_variables(n: dict[str, Any]) -> dict[str, Any]:
    """The numbers report.qmd quotes (`{{< meta v.KEY >}}`), formatted as printed; a key the ledger cannot
    give is left out, and rendering fails on it by name."""
    v: dict[str, Any] = dict(
        published_baseline=f"{PUBLISHED_BASELINE}", budget_min=f"{CPU_BUDGET_S // 60}", n_runs=str(n["n_runs"]),
        baseline=fmt_loss(n["baseline"]["final_val_loss"]), final_rung=n["final_stage"],
        final_loss=fmt_loss(n["final"]["final_val_loss"]), final_ratio=fmt_ratio(n["ratio"]),
        final_min=f"{(n['final']['wall_time_s'] or 0) / 60:.1f}",
        baseline_hours=f"{(n['baseline']['wall_time_s'] or 0) / 3600:.1f}")
    fs = n.get("final_seeds") or {}
    if fs:
        v.update(final_seeds=str(fs["n"]), final_mean=fmt_loss(fs["mean"]), final_std=f"{fs['std']:.4f}",
                 final_mean_ratio=fmt_ratio(fs["ratio"]), final_fastest_min=f"{fs['wall_min_s'] / 60:.1f}",
                 final_slowest_min=f"{fs['wall_max_s'] / 60:.1f}", final_over_budget=str(fs["over_budget"]))
    for key in ("best_single", "best_in_budget"):
        b = n.get(key)
        if b:
            v[key] = {"rung": b["rung"], "loss": fmt_loss(b["loss"]), "ratio": fmt_ratio(b["ratio"]),
                      "min": f"{b['wall_time_s'] / 60:.1f}", "hardware": b["hardware"],
                      "precision": b["precision"]}
    story = pd.DataFrame(n.get("story") or [])
    if len(story):
        gpu = story[story["device"] == "GPU"].reset_index(drop=True)
        total = story["loss"].iloc[0] - n["final"]["final_val_loss"]   # baseline to the last rung
        v["gpu"] = {}
        for i in range(1, len(gpu)):
            key = gpu["step"][i].split(" ")[0]
            v["gpu"][key] = {"ratio": fmt_ratio(gpu["ratio"][i]),
                             "vs_previous": f"{gpu['loss'][i] / gpu['loss'][i - 1] - 1:+.1%}",
                             "share_of_gain": f"{(gpu['loss'][i - 1] - gpu['loss'][i]) / total:.0%}"}
    sc = n.get("screens") or {}
    v["agree"] = {key: {"pairs": str(a["pairs"]), "sign": f"{a['sign_agreement']:.0%}",
                        "clear_pairs": str(a["clear_pairs"]), "clear_sign": f"{a['clear_sign_agreement']:.0%}",
                        "spearman": f"{a['spearman']:.2f}"} for key, a in (sc.get("agreement") or {}).items()}
    st = sc.get("stack")
    if st:
        v["stack"] = {"delta": f"{st['delta']:+.4f}", "p": f"{st['p']:.2f}",
                      "delta_pct": f"{100 * st['delta'] / st['reference_mean']:+.2f}%"}
    v["cost"] = {study: {label: {"mean": fmt_loss(x["mean"]), "ratio": fmt_ratio(x["ratio"]),
                                 "seeds": str(x["seeds"]),
                                 "delta": f"{x['delta']:+.4f}", "cost": f"{x['cost']:.1f}",
                                 "delta_pct": f"{100 * x['delta'] / (x['mean'] - x['delta']):+.2f}%"}
                         for label, x in (bc.get("points") or {}).items()}
                 for study, bc in (sc.get("by_cost") or {}).items()}
    v["stability"] = {label: {k: (str(x) if k == "probes" else f"{x:.1f}" if "spread" in k else f"{x:.1e}")
                              for k, x in d.items()}
                      for label, d in (n.get("stability") or {}).items()}
    for key in ("epic2", "sgd_lr", "multiplicity", "runtimes", "rung_seeds", "sensitivity"):
        if n.get(key):
            v[key] = _formatted(n[key])
    rt = n.get("runtimes") or {}
    v["future"] = {}
    for key, plan in TEXT["future"].items():   # what each next step would cost, priced by the ledger's runs
        times = n.get(plan["times"].split(".")[0], {}).get(plan["times"].split(".")[1]) if plan.get("times") else 1
        if rt.get(plan["per"]) is not None and times is not None:
            runs = plan["runs"] * times
            v["future"][key] = {"runs": str(runs), "min": f"{runs * rt[plan['per']]:.0f}",
                                "h": f"{runs * rt[plan['per']] / 60:.1f}"}
    for key, a in (sc.get("agreement") or {}).items():   # agreeing signs as a count, and against a coin
        k = round(a["sign_agreement"] * a["pairs"])
        v["agree"][key].update(agreeing=str(k), coin_p=f"{sign_test_p(k, a['pairs']):.2f}")
    tr = sc.get("truncation")
    if tr and tr.get("table"):
        t = pd.DataFrame(tr["table"])
        v["truncation"] = {"best_spearman_but_last": f"{t['spearman'].iloc[:-1].max():.2f}" if len(t) > 1 else ""}
    return v


def stability_section(out: Path, roles: dict[str, Any]) -> dict[str, Any]:
    """The stability study (roles["stability"]): fig-stability.png and per point the medians over its probes
    of the gradient norm, each group's update-to-weight ratio and their spread across groups (largest/smallest)."""
    spec = roles.get("stability") or {}
    prof = spec.get("profile", "quick")
    f = recorded(prof, spec.get("study"))
    if f is None:
        return {}
    runs = {r.label: read_stability(run_dir(prof, r.hash)) for r in f[f["status"] == "finished"].itertuples()}
    runs = {k: v for k, v in runs.items() if len(v)}
    if not runs:
        return {}
    plots.save(plots.stability(runs, spec.get("words")), out / "fig-stability.png", close=True)
    numbers = {}
    for label, d in runs.items():
        ratios = d[[c for c in d.columns if c.startswith("ratio_")]]
        grads = d[[c for c in d.columns if c.startswith("grad_") and c != "grad_norm"]]
        numbers[label] = {"grad_norm": float(d["grad_norm"].median()), "probes": int(len(d)),
                          **{c: float(ratios[c].median()) for c in ratios.columns},
                          "spread": float((ratios.max(axis=1) / ratios.min(axis=1)).median()),
                          "grad_spread": float((grads.max(axis=1) / grads.min(axis=1)).median())}
    return numbers


def _formatted(x: Any) -> Any:
    """A nested dict of numbers as report.qmd prints them: counts as integers, minutes with one decimal,
    percentages with their sign (keys ending in _pct), losses with four decimals, p with two."""
    if isinstance(x, dict):
        return {k: (_formatted(v) if isinstance(v, dict) else _format_one(k, v)) for k, v in x.items()}
    return x


def _format_one(key: str, v: Any) -> str:
    if v is None or isinstance(v, str):
        return "" if v is None else v
    if isinstance(v, (bool, int)) or (isinstance(v, float) and key.startswith("n_")):
        return str(int(v))
    if key.endswith("_pct"):
        return f"{v:+.2f}%"
    if key.endswith("_min"):
        return f"{v:.1f}"
    if key.endswith("_h"):
        return f"{v:.1f}"
    if key.startswith("p") or key.endswith("_p"):
        return f"{v:.2f}"
    if key.startswith("ratio") or key.endswith("_ratio"):
        return f"{v:.1e}"
    if key.startswith("expected"):
        return f"{v:.1f}"
    return fmt_loss(v)


def seed_plan_sections(profile: str, out: Path, roles: dict[str, Any], found: pd.DataFrame,
                       results: pd.DataFrame, seed_frame: pd.DataFrame | None, base: pd.Series) -> dict[str, Any]:
    """The seed plan's remaining sections: Epic 2's changes one at a time on the proxy (epic2.md), the SGD
    learning-rate study (sgd-lr.md), Epic 3's sensitivity at full scale from the screens' single changes
    (fig-sensitivity-full.png), the screens' multiplicity, the runs' costs for the future work, and the
    best single rung's seeds. Each is left out where the ledger lacks it."""
    numbers: dict[str, Any] = {}
    for name in ("epic2.md", "sgd-lr.md"):
        (out / name).write_text("")
    proxy = STUDY_PROFILE[profile]
    epic2 = (roles.get("proxy") or {}).get("epic2")
    rows = found[(found["study"] == epic2) & found["scale"].astype(str).str.startswith("on the")] \
        if "scale" in found else found.iloc[:0]
    if len(rows):
        noise = rows["noise"].iloc[0]
        judged = rows.assign(beyond=(rows["loss"] - rows["reference_loss"]).abs() > 2 * noise)
        t = pd.DataFrame({"change": judged["words"], "official loss": judged["loss"].map(fmt_loss),
                          "against Epic 1": judged["reference_loss"].map(fmt_loss),
                          "change (%)": judged["judged_delta"].map(lambda x: f"{x:+.2%}"),
                          "beyond 2 seed std": judged["beyond"].map({True: "yes", False: "no"})})
        (out / "epic2.md").write_text(md_table(t, "lrrrl") + "\n" + say("epic2.caption", proxy=proxy))
        numbers["epic2"] = {"n_changes": len(rows), "n_beyond": int(judged["beyond"].sum()),
                            "noise_pct": 200 * noise / rows["reference_loss"].iloc[0],
                            **{re.sub(r"\W", "_", str(r.change)): {"delta_pct": 100 * r.judged_delta}
                               for r in rows.itertuples()}}
    sgd = _sgd_lr(out, roles)
    if sgd:
        numbers["sgd_lr"] = sgd
    gpu = found[found["scale"].astype(str).str.contains("GPU") & found["noise"].notna()] if "scale" in found \
        else found.iloc[:0]
    if len(gpu):
        beyond = (gpu["loss"] - gpu["reference_loss"]).abs() > 2 * gpu["noise"]
        numbers["multiplicity"] = {
            "n_points": len(gpu), "n_single_seed": int((gpu["seeds"] == 1).sum()),
            "n_beyond": int(beyond.sum()), "n_helped": int((beyond & (gpu["loss"] < gpu["reference_loss"])).sum()),
            "expected": chance_calls(gpu["seeds"].tolist(), gpu["reference_seeds"].tolist()),
            "expected_single_p": 100 * chance_calls([1], [3])}
    sens = roles.get("sensitivity") or {}
    if sens and len(gpu):
        keep = [(r, next(iter(r.fields))) for r in found.itertuples()
                if r.study in sens.get("studies", []) and isinstance(r.fields, dict) and len(r.fields) == 1
                and next(iter(r.fields)) in sens.get("fields", [])]
        if keep:
            pts = pd.DataFrame([{"field": f, "value": r.fields[f][0], "reference_value": r.fields[f][1],
                                 "delta": r.judged_delta, "noise": (r.noise or 0) / r.reference_loss,
                                 "where": r.where, "seeds": r.seeds} for r, f in keep])
            plots.save(plots.sensitivity_full(pts, TEXT["settings"]), out / "fig-sensitivity-full.png", close=True)
            numbers["sensitivity"] = {"n_points": len(pts), "n_single_seed": int((pts["seeds"] == 1).sum()),
                                      "n_fields": pts["field"].nunique()}
    gpu_runs = results[(results["device"] == "cuda") & (results["status"] == "finished")]
    rt: dict[str, Any] = {}
    gb = gpu_runs[gpu_runs["is_baseline"]]
    if len(gb):
        rt["gpu_baseline_min"] = float(gb["wall_time_s"].iloc[0]) / 60
    small = gpu_runs[gpu_runs["n_params"] < 10e6]
    if len(small):
        rt["gpu_small_min"] = float(small["wall_time_s"].median()) / 60
    best = _best_rung(ladder_frame(profile, results).dropna(subset=["final_val_loss"]), base, single=True)
    if best:
        st = _stage_seeds(seed_frame, pd.Series({"stage": best["rung"]}), base, results, profile)
        if st:
            numbers["rung_seeds"] = {"best_single": {"n": st["n"], "fastest_min": st["wall_min_s"] / 60,
                                                     "slowest_min": st["wall_max_s"] / 60,
                                                     "n_over_budget": st["over_budget"]}}
            rt["cpu_single_min"] = st["wall_min_s"] / 60
    if rt:
        numbers["runtimes"] = rt
    return numbers


def _sgd_lr(out: Path, roles: dict[str, Any]) -> dict[str, Any]:
    """The SGD learning-rate study (roles["stability"]["lr_study"]): per LR multiple its seeds' official loss,
    the change against the first point, the exact p, and the medians over its probes of the hidden matrices'
    update-to-weight ratio and of the gradient norm; sgd-lr.md."""
    spec = roles.get("stability") or {}
    prof = spec.get("profile", "quick")
    f = recorded(prof, spec.get("lr_study"))
    if f is None or f.empty:
        return {}
    f = fold_seed_labels(f)
    labels = list(dict.fromkeys(f["label"]))
    ok = f[f["status"] == "finished"]
    ref = ok.loc[ok["label"] == labels[0], "final_val_loss"].tolist()
    rows, numbers = [], {}
    for label in labels:
        g = f[f["label"] == label]
        done = g[g["status"] == "finished"]
        loss = done["final_val_loss"].astype(float)
        probes = [read_stability(run_dir(prof, h)) for h in done["hash"]]
        probes = [p for p in probes if len(p)]
        hidden = float(pd.concat([p["ratio_hidden"] for p in probes]).median()) if probes else float("nan")
        grad = float(pd.concat([p["grad_norm"] for p in probes]).median()) if probes else float("nan")
        lr = ledger.read_json(run_dir(prof, g["hash"].iloc[0]) / "config.json")["config"]["lr"]
        p = permutation_p(loss.tolist(), ref) if label != labels[0] else None
        numbers[label] = {"n_seeds": len(g), "n_finished": len(done), "mean": float(loss.mean()),
                          "std": float(loss.std()) if len(loss) > 1 else None,
                          "delta_pct": 100 * (loss.mean() / pd.Series(ref).mean() - 1),
                          "p": p, "ratio_hidden": hidden, "grad_norm": grad}
        rows.append({"multiple of the baseline's LR": label.removeprefix("lr"), "learning rate": f"{lr:g}",
                     "seeds (finished)": f"{len(g)} ({len(done)})", "official loss": fmt_loss(loss.mean()),
                     "std": fmt_loss(loss.std()) if len(loss) > 1 else "",
                     f"vs {labels[0].removeprefix('lr')} (%)": "" if label == labels[0]
                     else f"{numbers[label]['delta_pct']:+.2f}",
                     "p": "" if p is None else f"{p:.2f}", "hidden update / weight": f"{hidden:.1e}",
                     "gradient norm": f"{grad:.2f}"})
    (out / "sgd-lr.md").write_text(md_table(pd.DataFrame(rows), "llrrrrrrr") + "\n" + say("sgd_lr.caption"))
    return numbers
