"""Training-speed benchmark: the original's step, our step, and the machine's matmul ceiling.

    python -m mainrun bench                      # baseline preset
    python -m mainrun bench --set d_model=256 n_layer=4 vocab_size=8192

Measured in one process: (a) a reference step written like the original train.py (fp32, manual masked-softmax
attention, SGD without foreach), (b) our training step with the default fast settings, (c) large matmuls in
fp32 and bf16. FLOPs follow the 6·N·T rule (N = parameters in matmuls: embedding lookups left out, a tied head
counted once; T = tokens); attention-score FLOPs are not counted. Medians over timed steps after warm-up.

    python -m mainrun bench --sweep              # runs per hour, GPU where torch sees one, else CPU

--sweep packs runs onto a device through the engine (`cluster.run_points`, K runs per GPU): the same seeds at
K = 1, 2, 4, 8, 12 runs per GPU (`gpu_packing`), or 1 run x 2 threads against 2 runs x 1 thread (`cpu_packing`).
Per level: runs per hour (startup apart) and each seed's final loss against the first level's, beside the seed
spread (packing must not move a result by more than seed noise). JSON to results/bench/packing-<device>.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import host, ledger, tables
from .config import EVAL_BATCH, EVAL_BLOCK, Config, from_dict, make_config, parse_overrides, run_hash
from .data import get_batch, prepare
from .evaluate import autocast, evaluate
from .host import matmul_seconds, native_bf16, resolve_device, resolve_execution, resolve_precision, timed
from .optim import build_optimizers
from .reference import RefGPT
from .stats import time_to_quality
from .studies import build_configs
from .train import build_model

TOKENS_PER_EPOCH = 1_155_847   # our corpus, 16k BPE (dataset_info of the baseline run)


def flop_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all, less the tables used only as lookups (the learned position
    table `pos_emb`, a plain Parameter in model.GPT and reference.RefGPT, and the token table when the head is
    untied); a token table tied to the head counts once."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)} - linear
    lookups |= {id(p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "pos_emb"}
    return sum(p.numel() for p in model.parameters() if id(p) not in lookups)


def random_batch(cfg: Config, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed random batch (inputs, targets) of the config's shape that the timed steps train on."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, cfg.vocab_size, (2, cfg.batch_size, cfg.block_size), generator=g).to(device)
    return x, y


def train_step(cfg: Config, device: str, precision: str, x: torch.Tensor, y: torch.Tensor):
    """(step, model): one of our training steps on the batch (x, y) as a function of no arguments that
    returns the loss (a fresh model and its optimizers; compiled when cfg.compile)."""
    model = build_model(cfg, cfg.vocab_size).to(device)
    opts = build_optimizers(cfg, model, device)
    fwd = torch.compile(model) if cfg.compile else model

    def step() -> float:
        with autocast(device, precision):
            _, loss = fwd(x, y)
        loss.backward()
        with torch.profiler.record_function("gradient clipping"):   # per member, as the trainer clips
            for part in (model.members if cfg.ensemble > 1 else [model]) if cfg.grad_clip else []:
                torch.nn.utils.clip_grad_norm_(part.parameters(), cfg.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        return loss.item()
    return step, model


def bench_config(cfg: Config, device: str, reps: int = 3, warmup: int = 1, reference: bool = True) -> dict:
    """The timed rows (the reference step where the config has the original's architecture, and ours) on one
    random batch, evaluation throughput and peak memory."""
    V, B, T = cfg.vocab_size, cfg.batch_size, cfg.block_size
    x, y = random_batch(cfg, device)
    rows = {}
    if reference and cfg.d_model and cfg.norm == "layernorm" and cfg.mlp == "gelu":
        torch.manual_seed(cfg.rng_seed)
        ref = RefGPT(V, T, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.dropout).to(device)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, foreach=False)

        def ref_step():
            _, loss = ref(x, y)
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0, foreach=False)
            ref_opt.step()
            loss.item()
        rows["reference"] = {"times": timed(ref_step, device, warmup, reps), "precision": "fp32",
                             "n_params": sum(p.numel() for p in ref.parameters()),
                             "n_flop_params": flop_params(ref)}
        del ref, ref_opt
    precision = resolve_precision(cfg.precision, device)
    our_step, model = train_step(cfg, device, precision, x, y)
    rows["ours"] = {"times": timed(our_step, device, warmup, reps), "precision": precision,
                    "n_params": model.num_params(), "n_flop_params": flop_params(model)}
    # evaluation throughput at the official shape: one full 64 x 128 span per call
    val = torch.randint(0, V, (EVAL_BATCH * EVAL_BLOCK + 1,))
    eval_times = timed(lambda: evaluate(model, val, 1, device, precision), device, 1, 2)
    for r in rows.values():
        s = statistics.median(r["times"])
        r.update(s_per_step=s, tokens_per_s=B * T / s, gflops=6 * r["n_flop_params"] * B * T / s / 1e9)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"rows": rows, "eval_tokens_per_s": EVAL_BATCH * EVAL_BLOCK / statistics.median(eval_times),
            "tokens_per_step": B * T, "peak_mem_mb": peak_mb}


def profile_ops(cfg: Config, device: str, rows: int = 15) -> str:
    """torch.profiler's top ops (self time) for one of our training steps (train_step) after a warm-up."""
    from torch.profiler import profile

    step, _ = train_step(cfg, device, resolve_precision(cfg.precision, device), *random_batch(cfg, device))
    step()
    with profile() as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ----------------------------------------------------------------------------- where the time goes
# The parts of a training step, in the order printed. Each profiled op's own (self) time goes to one part, by the
# first rule its name matches (a compiled step's fused kernels are named after the ops they fuse); time inside an
# optimizer step or gradient clipping is "optimizer"; what no op accounts for is "framework and Python".
PARTS = ("matmul", "attention", "loss", "dropout masks", "norms and elementwise", "optimizer",
         "framework and Python")
PART_RULES = (("loss", r"log_softmax|nll_loss|cross_entropy"),
              ("dropout masks", r"bernoulli|native_dropout|dropout|random|randint|bitwise|arange"),
              ("attention", r"scaled_dot_product|flash_attention|safe_softmax|_softmax"),
              ("matmul", r"(^|::|_)(mm|addmm|bmm|baddbmm|matmul|linear)(_|$)|mkldnn|onednn"))


def part_of(name: str) -> str:
    """The part of the step an op's self time belongs to (PART_RULES; else norms and elementwise)."""
    return next((part for part, rule in PART_RULES if re.search(rule, name)), "norms and elementwise")


def breakdown(cfg: Config, device: str, s_per_step: float) -> dict[str, float]:
    """Seconds of each part of one training step (PARTS), scaled so that they sum to s_per_step: torch.profiler
    on one step after warm-up, with the compiled kernels profiled one by one (inductor's kernel profile)."""
    import torch._inductor.config as inductor
    from torch.profiler import profile

    # one profiler event per fused kernel: set before compiling, with the FX graph cache off (a cached graph from
    # this process's earlier compile has no kernel events) and dynamo's state reset
    cache, inductor.fx_graph_cache, inductor.cpp.enable_kernel_profile = inductor.fx_graph_cache, False, True
    torch._dynamo.reset()
    try:
        step, _ = train_step(cfg, device, resolve_precision(cfg.precision, device), *random_batch(cfg, device))
        step(), step()
        t0 = time.perf_counter()
        with profile() as prof:
            step()
        wall = time.perf_counter() - t0
    finally:
        inductor.cpp.enable_kernel_profile, inductor.fx_graph_cache = False, cache
    parts = dict.fromkeys(PARTS, 0.0)
    for ev in prof.events():
        chain, up = [ev.name], ev.cpu_parent
        while up is not None:
            chain.append(up.name)
            up = up.cpu_parent
        if any(n.startswith("Optimizer.") or n == "gradient clipping" for n in chain):
            part = "optimizer"
        elif re.match(r"## Call CompiledFxGraph|Torch-Compiled|CompiledFunction|autograd::|## ", ev.name):
            part = "framework and Python"            # the wrappers' own time, around the kernels they call
        else:
            part = part_of(ev.name)
        parts[part] += ev.self_cpu_time_total / 1e6
    parts["framework and Python"] += max(0.0, wall - sum(parts.values()))
    scale = s_per_step / sum(parts.values())
    return {k: v * scale for k, v in parts.items()}


# The A/B reference for speed claims: the last commit before this round's fast paths (bench --against), and the
# preset that stood there for a recipe made since (final8 is final7 with hashed dropout masks).
BEFORE = "d3709e8"
BEFORE_PRESETS = {"final8": "final7"}
# A step worker for ab_against: builds a preset's training step with whichever mainrun is on PYTHONPATH (today's
# or an old commit's, whose bench.train_step/random_batch and train.resolve_execution have the same signature),
# warms it up, then times one step per line read from stdin.
_WORKER = """
import dataclasses, json, sys, timeit
from mainrun.bench import random_batch, train_step
from mainrun.config import Config, make_config
try:
    from mainrun.host import resolve_execution
except ImportError:                                        # before host.py
    from mainrun.train import resolve_execution
spec = json.loads(sys.argv[1])
known = {f.name for f in dataclasses.fields(Config)}       # an old commit lacks the knobs added since
overrides = {k: v for k, v in spec["overrides"].items() if k in known}
cfg = resolve_execution(make_config(spec["profile"], spec["preset"], **overrides))
step = train_step(cfg, cfg.device, cfg.precision, *random_batch(cfg, cfg.device))[0]
step(); step()
print(json.dumps(sorted(set(spec["overrides"]) - known)), flush=True)
for _ in sys.stdin:
    print(timeit.timeit(step, number=1), flush=True)
"""


def ab_against(ref: str, before: dict, after: dict, reps: int = 5) -> dict:
    """Median s/step of `before` ({"profile", "preset", "overrides"}) under the code at git ref `ref` and of
    `after` under this checkout's code, each in its own process, timed alternately (one step of each per round,
    so a slow patch of the machine hits both alike)."""
    import subprocess
    import sys

    root = ledger.repo_root()
    if not (root / ".git").exists():
        raise ValueError(f"--against {ref} needs a git checkout of mainrun (the package at {root} is not one)")
    with tempfile.TemporaryDirectory(prefix="mainrun-ab-") as old:
        archive = subprocess.run(["git", "-C", str(root), "archive", ref, "mainrun"], capture_output=True)
        if archive.returncode:
            raise ValueError(f"--against {ref}: git cannot archive it ({archive.stderr.decode().strip()})")
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        procs = {}
        for name, path, spec in (("before", old, before), ("after", str(root), after)):
            env = {**os.environ, "PYTHONPATH": path}
            procs[name] = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(spec)], env=env, cwd=path,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            ready = procs[name].stdout.readline()
            if not ready.startswith("["):
                raise RuntimeError(f"the {name} step worker ({spec}) failed to start; see its error above")
            spec["unknown_there"] = json.loads(ready)    # overrides that code does not have, left out there
        times = {name: [] for name in procs}
        for _ in range(reps):
            for name, p in procs.items():
                p.stdin.write("step\n")
                p.stdin.flush()
                times[name].append(float(p.stdout.readline()))
        for p in procs.values():
            p.stdin.close()
            p.wait()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"ref": ref, "before": {**before, "s_per_step": med["before"], "times": times["before"]},
            "after": {**after, "s_per_step": med["after"], "times": times["after"]},
            "speedup": med["before"] / med["after"]}


def run_bench(cfg: Config, reps: int = 3, out_dir: Path | None = None, label: str | None = None,
              ops: bool = False, reference: bool = True, against: str | None = None, parts: bool = True) -> dict:
    """bench_config and the matmul ceiling, extrapolated to the config's whole run and set beside its committed
    run (if the ledger has one); written to results/bench/<device>-<label>.json (and -ops.txt with ops)."""
    device = resolve_device(cfg.device)
    # GFLOP/s of an n x n x n matmul (random data; median of 3 after one warm-up)
    sizes = {"fp32": (torch.float32, 8192 if device == "cuda" else 2048),   # emulated bf16 is too slow for 2048
             "bf16": (torch.bfloat16, 8192 if device == "cuda" else 2048 if native_bf16(device) else 512)}
    ceil = {k: 2 * n**3 / statistics.median(matmul_seconds(n, dtype, device)) / 1e9
            for k, (dtype, n) in sizes.items()}
    res = bench_config(cfg, device, reps=reps, reference=reference)
    rows, ours = res["rows"], res["rows"]["ours"]
    try:  # the real token counts of this config's tokenizer (a smaller vocabulary means more steps)
        corpus = prepare(cfg)
        train_tokens, val_tokens, counted = len(corpus.train_ids), len(corpus.val_ids), "this config's corpus"
    except Exception:
        corpus = None
        train_tokens, val_tokens = TOKENS_PER_EPOCH, 129_151
        counted = "the 16k-vocabulary corpus (no data here)"
    steps = cfg.epochs * (train_tokens // res["tokens_per_step"] // cfg.grad_accum)
    n_evals = cfg.epochs * cfg.evals_per_epoch + 1
    span = EVAL_BATCH * EVAL_BLOCK
    train_s = steps * ours["s_per_step"]
    eval_s = n_evals * (val_tokens // (span + 1)) * span / res["eval_tokens_per_s"]
    out = {
        "label": label or "custom", "config": cfg.to_dict(), "device": device, "host": host.hardware(device),
        "matmul_gflops": ceil, **res,
        "speedup_vs_reference": (rows["reference"]["s_per_step"] / ours["s_per_step"]
                                 if "reference" in rows else None),
        "fraction_of_matmul_ceiling": ours["gflops"] / max(ceil.values()),
        "fraction_of_bf16_matmul": ours["gflops"] / ceil["bf16"],
        "fraction_of_matmul_in_precision": ours["gflops"] / ceil[ours["precision"]],
        "extrapolated_7_epoch_s": train_s + eval_s,
        "extrapolation": {"optimizer_steps": steps, "evaluations": n_evals, "tokens_counted_from": counted},
        "eval_share_extrapolated": eval_s / (train_s + eval_s),
        # the same config's committed run, if the ledger has one (needs the data for its hash)
        "committed_run": from_the_ledger(cfg, corpus.fingerprint) if corpus else None,
        "flops_note": "6*N*T per step, N without embedding lookups (n_flop_params); "
                      "attention-score FLOPs not counted",
        "measured_at": datetime.now(timezone.utc).isoformat(),
    }
    if parts:   # where the time goes: the step's parts, then evaluation and data per optimizer step of the run
        ids = torch.randint(0, cfg.vocab_size, (train_tokens,))
        data_s = statistics.median(timed(lambda: get_batch(ids, 0, cfg.block_size, cfg.batch_size), reps=20))
        out["breakdown_s"] = {**breakdown(cfg, device, ours["s_per_step"]), "evaluation": eval_s / steps,
                              "data": data_s * cfg.grad_accum}
    if against:
        recipe = make_config(cfg.profile, cfg.preset).to_dict()
        sets = {k: v for k, v in cfg.to_dict().items() if v != recipe[k]}
        after = {"profile": cfg.profile, "preset": cfg.preset, "overrides": sets}
        before = {**after, "preset": BEFORE_PRESETS.get(cfg.preset, cfg.preset), "overrides": dict(sets)}
        try:
            out["ab"] = ab_against(against, before, after, reps)
        except ValueError as e:                 # not a checkout, or a clone without that commit
            out["ab"] = {"ref": against, "skipped": str(e)}
    if device == "cuda":
        out["mfu_vs_989_tflops"] = ours["gflops"] / 989e3
    out_dir = Path(out_dir or ledger.repo_root() / "results" / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    if ops:
        out["top_ops_file"] = f"{device}-{out['label']}-ops.txt"
        (out_dir / out["top_ops_file"]).write_text(profile_ops(cfg, device) + "\n")
    (out_dir / f"{device}-{out['label']}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def from_the_ledger(cfg: Config, fingerprint: str) -> dict | None:
    """What the committed ledger measured for this exact config on this kind of device: the whole run's
    time, the share of it spent evaluating, and time-to-quality (until it first beats the same device's
    baseline's final official loss). None when the ledger has no finished run of it."""
    cfg = resolve_execution(cfg)
    root = ledger.results_root(cfg.profile)
    run_dir = ledger.find_run(root, run_hash(cfg, fingerprint))
    summary = ledger.read_json(run_dir / "summary.json") if run_dir else None
    if not summary or summary.get("status") != "finished":
        return None
    out = {"run": run_dir.name, "official_loss": summary["final_val_loss"],
           "wall_time_s": summary["wall_time_s"], "train_time_s": summary["train_time_s"],
           "eval_and_checkpoint_share": 1 - summary["train_time_s"] / summary["wall_time_s"]}
    results = tables.load_results(cfg.profile)
    base = results[results["is_baseline"] & (results["device"] == cfg.device)]
    if len(base):
        target = float(base["final_val_loss"].iloc[0])
        out.update(baseline_run=base["run"].iloc[0], baseline_loss=target,
                   time_to_baseline_s=time_to_quality(run_dir, target))
    return out


def format_table(r: dict) -> str:
    host = r["host"]
    lines = [f"benchmark '{r['label']}' on {r['device']} ({host['cpu']}, {host['torch_threads']} threads, "
             f"torch {host['torch_version']})",
             f"{'step':<10}{'precision':>10}{'s/step':>10}{'tokens/s':>12}{'GFLOP/s':>10}"]
    for name, row in r["rows"].items():
        lines.append(f"{name:<10}{row['precision']:>10}{row['s_per_step']:>10.3f}{row['tokens_per_s']:>12,.0f}"
                     f"{row['gflops']:>10.1f}")
    m = r["matmul_gflops"]
    lines += [f"matmul ceiling: fp32 {m['fp32']:.1f} GFLOP/s, bf16 {m['bf16']:.1f} GFLOP/s",
              f"ours / reference: {r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "",
              f"ours / best matmul rate: {r['fraction_of_matmul_ceiling']:.0%}; "
              f"ours / bf16 matmul rate: {r['fraction_of_bf16_matmul']:.0%}",
              f"eval throughput (64 x 128): {r['eval_tokens_per_s']:,.0f} tokens/s; "
              f"peak memory {r['peak_mem_mb']:,.0f} MB",
              f"7-epoch run extrapolated: {r['extrapolated_7_epoch_s'] / 60:.1f} min "
              f"({r['extrapolation']['optimizer_steps']} steps, {r['extrapolation']['evaluations']} evaluations; "
              f"{r['flops_note']})",
              f"evaluations' share of that run: {r['eval_share_extrapolated']:.1%}",
              f"ours / matmul rate in its own precision ({r['rows']['ours']['precision']}): "
              f"{r['fraction_of_matmul_in_precision']:.0%}"]
    if "breakdown_s" in r:
        b = r["breakdown_s"]
        total = sum(b.values())
        lines.append(f"where the time goes, per optimizer step of the run ({total:.3f} s: the step, then "
                     f"evaluation and data spread over the steps):")
        lines += [f"  {k:<24}{v:>8.3f} s {v / total:>6.1%}" for k, v in b.items()]
    if "skipped" in r.get("ab", {}):
        lines.append(f"A/B against {r['ab']['ref']} skipped: {r['ab']['skipped']}")
    elif "ab" in r:
        ab = r["ab"]
        left = ab["before"].get("unknown_there")
        lines.append(f"A/B, alternating steps: {ab['before']['preset']} at {ab['ref']}"
                     + (f" (without {', '.join(left)}, which it lacks) " if left else " ")
                     + f"{ab['before']['s_per_step']:.3f} s/step, {ab['after']['preset']} here "
                     f"{ab['after']['s_per_step']:.3f} s/step: {ab['speedup']:.2f}x")
    c = r.get("committed_run")
    if c:
        ttq = c.get("time_to_baseline_s")
        lines.append(f"committed run {c['run']}: {c['wall_time_s'] / 60:.1f} min for 7 epochs (official "
                     f"{c['official_loss']:.4f}); evaluations and checkpoints "
                     f"{c['eval_and_checkpoint_share']:.1%} of it"
                     + (f"; beats the baseline's {c['baseline_loss']:.4f} after {ttq / 60:.1f} min"
                        if ttq else ""))
    return "\n".join(line for line in lines if line)


# ----------------------------------------------------------------------------- runs per hour (bench --sweep)
def _warm(cfg_dict: dict, sha256: str | None, name: str | None) -> str:
    """On each worker before the clock starts: the imports (this module's: torch, the model) and the data
    preparation (caches)."""
    from .cluster import cached_data

    cfg = from_dict(cfg_dict)
    if sha256:
        cfg = dataclasses.replace(cfg, data=str(cached_data(sha256, name)))
    prepare(cfg)
    return "ok"


def level(profile: str, preset: str, overrides: dict, seeds: list[int], workers: int, threads_per_run: int,
          runs_per_gpu: int | None, gpus: int | None, tag: str, tmp: Path) -> dict:
    """N runs (one per seed) through the engine (`cluster.run_points`, what `run_sweep` calls on a cluster) on a
    fresh local cluster, into a temporary ledger; wall time from the first submission to the last result
    installed. The runner's study record is left out: a benchmark records no study."""
    from distributed import Client

    from .cluster import data_files, local_cluster, run_points, send_data
    from .train import resolve_job

    load_before = os.getloadavg()[0]           # other jobs on the machine skew every number here
    env = {"MAINRUN_CHECKPOINTS": str(tmp / f"ckpt-{tag}"), "OMP_NUM_THREADS": str(threads_per_run)}
    spec = {"base": {"preset": preset, **overrides}, "points": {"run": {}}, "seeds": list(seeds)}
    t0 = time.time()
    cluster = local_cluster(workers, runs_per_gpu=runs_per_gpu, gpus=gpus, env=env)
    try:
        with Client(cluster) as client, ledger.results_override(tmp / f"results-{tag}"):
            client.wait_for_workers(len(cluster.workers), timeout=120)
            jobs = [resolve_job(cfg, label=f"{p.label} seed={p.seed}")
                    for p, cfg in build_configs(spec, profile, f"packing-{tag}")]
            data, source = data_files(jobs), jobs[0].source     # every seed reads the same titles
            if source.get("kind") != "hub":  # before the clock, as the engine sends it (so it does not again)
                send_data(client, data[source["sha256"]], source["name"])
            client.run(_warm, jobs[0].cfg.to_dict(), source.get("sha256"), source.get("name"))
            startup = time.time() - t0
            t1 = time.time()
            summaries = run_points(jobs, client, data, f"packing-{tag}", threads_per_run=threads_per_run,
                                   runs_per_gpu=runs_per_gpu)
            wall = time.time() - t1
        n_workers = len(cluster.workers)
    finally:
        cluster.close()
    per_seed = {k: [s.get(k) for s in summaries]
                for k in ("final_val_loss", "train_time_s", "tokens_per_s", "peak_cuda_mem_mb")}
    return {"tag": tag, "workers": n_workers, "runs_per_gpu": runs_per_gpu, "threads_per_run": threads_per_run,
            "runs": len(summaries), "startup_s": startup, "wall_s": wall,
            "runs_per_hour": len(summaries) / wall * 3600,
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
            "statuses": [s["status"] for s in summaries], "seeds": list(seeds), **per_seed}


def compare_losses(levels: list[dict]) -> dict:
    """Each level's per-seed final losses against the first level's, beside the spread over seeds there."""
    ref = levels[0]
    ref_losses = [x for x in ref["final_val_loss"] if x is not None]
    spread = statistics.stdev(ref_losses) if len(ref_losses) > 1 else None
    out = {"reference": ref["tag"], "seed_std_reference": spread, "levels": {}}
    for lv in levels:
        worst = max((abs(a - b) for a, b in zip(lv["final_val_loss"], ref["final_val_loss"])
                     if a is not None and b is not None), default=None)
        losses = [x for x in lv["final_val_loss"] if x is not None]
        within = worst <= spread if worst is not None and spread else None
        out["levels"][lv["tag"]] = {"mean_loss": statistics.fmean(losses) if losses else None,
                                    "max_abs_diff_vs_reference": worst, "within_seed_spread": within}
    return out


def packing(kind: str, levels: list[tuple], n_runs: int, profile: str, preset: str, base: dict, where: str,
            out_dir: Path | None, name: str) -> dict:
    """Each level (workers, threads per run, runs per GPU, GPUs, tag) measured on the same seeds; the JSON."""
    seeds = [1337 + i for i in range(n_runs)]
    with tempfile.TemporaryDirectory(prefix="mainrun-packing-") as tmp:
        done = [level(profile, preset, base, seeds, *lv, Path(tmp)) for lv in levels]
    out = {"kind": kind, "workload": f"{profile} profile, preset {preset}, {n_runs} runs (train_seed "
                                     f"{seeds[0]}..{seeds[-1]}), {where}",
           "host": host.hardware("cpu" if base["device"] == "cpu" else "cuda"), "levels": done,
           "losses": compare_losses(done), "measured_at": datetime.now(timezone.utc).isoformat()}
    path = Path(out_dir or ledger.repo_root() / "results" / "bench") / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    out["path"] = ledger.display_path(path)
    return out


def gpu_packing(ks: tuple[int, ...] = (1, 2, 4, 8, 12), n_runs: int = 12, profile: str = "full",
                preset: str = "final", device: str = "cuda", precision: str = "bf16", gpus: int | None = 1,
                overrides: dict | None = None, out_dir: Path | None = None, name: str = "packing-cuda") -> dict:
    """Runs per hour at K runs per GPU (K worker processes per GPU, each holding resource GPU=1/K). The test
    suite runs this very path with smoke runs on the CPU (`device="cpu"`)."""
    base = {"device": device, "precision": precision, "checkpoint_every": 0, **(overrides or {})}
    return packing("gpu", [(k, 1, k, gpus, f"k{k}") for k in ks], n_runs, profile, preset, base,
                   f"device={device}, precision={precision}", out_dir, name)


def cpu_packing(n_runs: int = 2, profile: str = "quick", preset: str = "epic1", overrides: dict | None = None,
                out_dir: Path | None = None, name: str = "packing-cpu") -> dict:
    """1 run x 2 threads (one worker, runs in turn) against 2 runs x 1 thread (two workers, at once)."""
    base = {"device": "cpu", "precision": "fp32", **(overrides or {})}
    return packing("cpu", [(1, 2, None, None, "1x2threads"), (2, 1, None, None, "2x1thread")], n_runs, profile,
                   preset, base, "cpu fp32", out_dir, name)


def format_packing(r: dict) -> str:
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
    lines = [f"packing benchmark ({r['kind']}): {r['workload']}",
             f"{'level':<12}{'workers':>8}{'threads':>8}{'runs':>6}{'startup s':>10}{'wall s':>9}{'runs/h':>9}"
             f"{'mean loss':>11}{'max |diff|':>11}"]
    for lv in r["levels"]:
        cmp = r["losses"]["levels"][lv["tag"]]
        lines.append(f"{lv['tag']:<12}{lv['workers']:>8}{lv['threads_per_run']:>8}{lv['runs']:>6}"
                     f"{lv['startup_s']:>10.1f}{lv['wall_s']:>9.1f}{lv['runs_per_hour']:>9.1f}"
                     f"{fmt(cmp['mean_loss'], '.5f'):>11}{fmt(cmp['max_abs_diff_vs_reference'], '.2e'):>11}")
    lines.append(f"seed spread (std of the final loss over seeds, {r['losses']['reference']}): "
                 f"{fmt(r['losses']['seed_std_reference'], '.2e')}; JSON: {r['path']}")
    return "\n".join(lines)


def main(args) -> int:
    """The `bench` command. --profile, --preset and --set default to None here (cli.py): unset, the step benchmark
    takes full/baseline and --sweep its own workload; under smoke the JSON goes to the smoke ledger, not the
    checkout's results/bench/ (--out names another folder)."""
    out_dir = args.out or (ledger.results_root("smoke") / "bench" if args.profile == "smoke" else None)
    if args.sweep:
        given = {k: v for k, v in (("profile", args.profile), ("preset", args.preset)) if v is not None}
        if args.set:
            given["overrides"] = parse_overrides(args.set)
        r = (gpu_packing if torch.cuda.is_available() else cpu_packing)(out_dir=out_dir, **given)
        print(format_packing(r))
        return 0
    preset = args.preset or "baseline"
    cfg = make_config(args.profile or "full", preset, **parse_overrides(args.set or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    # default label: preset, resolved precision, and any override other than the device (cpu-final-fp32.json)
    sets = [re.sub(r"[^A-Za-z0-9.]+", "", s) for s in args.set or [] if not s.startswith("device=")]
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    label = args.label or "-".join([preset, precision, *sets])
    against = None if args.against in ("", "none") else args.against
    r = run_bench(cfg, reps=args.reps, out_dir=out_dir, label=label, ops=args.ops, reference=not args.no_reference,
                  against=against, parts=not args.no_parts)
    print(format_table(r))
    return 0
