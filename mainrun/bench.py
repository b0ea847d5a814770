"""Training-speed benchmark: the original's step, our step, and the machine's matmul ceiling.

    python -m mainrun bench                      # baseline preset
    python -m mainrun bench --set d_model=256 n_layer=4 vocab_size=8192

Measured in one process: (a) a reference step written like the original train.py (fp32, manual masked-softmax
attention, SGD without foreach), (b) our training step with the default fast settings, (c) large matmuls in
fp32 and bf16. FLOPs follow the 6·N·T rule (N = parameters in matmuls: embedding lookups left out, a tied head
counted once; T = tokens); attention-score FLOPs are not counted. Medians over timed steps after warm-up.
"""
from __future__ import annotations

import json
import re
import resource
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import ledger, tables
from .config import EVAL_BATCH, EVAL_BLOCK, Config, make_config, parse_overrides, run_hash
from .data import prepare
from .evaluate import autocast, evaluate
from .optim import build_optimizers
from .reference import RefGPT
from .stats import time_to_quality
from .train import build_model, resolve_device, resolve_execution, resolve_precision

TOKENS_PER_EPOCH = 1_155_847   # our corpus, 16k BPE (dataset_info of the baseline run)


def _time(fn, device: str, warmup: int, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of fn after `warmup` calls (the device synchronised around each)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def matmul_rate(device: str, dtype: torch.dtype, n: int) -> float:
    """GFLOP/s of an n x n x n matmul (random data; median of 3 after one warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / statistics.median(_time(lambda: a @ b, device, 1, 3)) / 1e9


# Tables that the models (model.GPT, reference.RefGPT) read by index as plain Parameters, not nn.Embedding
LOOKUP_PARAMETERS = ("pos_emb",)


def flop_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all, less the tables used only as lookups (the learned position
    table, and the token table when the head is untied); a token table tied to the head counts once."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)} - linear
    lookups |= {id(p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in LOOKUP_PARAMETERS}
    return sum(p.numel() for p in model.parameters() if id(p) not in lookups)


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
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        return loss.item()
    return step, model


def bench_config(cfg: Config, device: str, reps: int = 3, warmup: int = 1, reference: bool = True) -> dict:
    """The timed rows (the reference step where the config has the original's architecture, and ours) on one
    random batch, evaluation throughput and peak memory."""
    V, B, T = cfg.vocab_size, cfg.batch_size, cfg.block_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (B, T), generator=g).to(device)
    y = torch.randint(0, V, (B, T), generator=g).to(device)
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
        rows["reference"] = {"times": _time(ref_step, device, warmup, reps), "precision": "fp32",
                             "n_params": sum(p.numel() for p in ref.parameters()),
                             "n_flop_params": flop_params(ref)}
        del ref, ref_opt
    precision = resolve_precision(cfg.precision, device)
    our_step, model = train_step(cfg, device, precision, x, y)
    rows["ours"] = {"times": _time(our_step, device, warmup, reps), "precision": precision,
                    "n_params": model.num_params(), "n_flop_params": flop_params(model)}
    # evaluation throughput at the official shape: one full 64 x 128 span per call
    val = torch.randint(0, V, (EVAL_BATCH * EVAL_BLOCK + 1,), generator=g)
    eval_times = _time(lambda: evaluate(model, val, 1, device, precision), device, 1, 2)
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

    x = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    step, _ = train_step(cfg, device, resolve_precision(cfg.precision, device), x, x)
    step()
    with profile() as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run_bench(cfg: Config, reps: int = 3, out_dir: Path | None = None, label: str | None = None,
              ops: bool = False, reference: bool = True) -> dict:
    """bench_config and the matmul ceiling, extrapolated to the config's whole run and set beside its committed
    run (if the ledger has one); written to results/bench/<device>-<label>.json (and -ops.txt with ops)."""
    device = resolve_device(cfg.device)
    ceil = {"fp32": matmul_rate(device, torch.float32, 8192 if device == "cuda" else 2048),
            "bf16": matmul_rate(device, torch.bfloat16, 8192 if device == "cuda" else 512)}
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
        "label": label or "custom", "config": cfg.to_dict(), "device": device, "host": ledger.hardware(device),
        "matmul_gflops": ceil, **res,
        "speedup_vs_reference": (rows["reference"]["s_per_step"] / ours["s_per_step"]
                                 if "reference" in rows else None),
        "fraction_of_matmul_ceiling": ours["gflops"] / max(ceil.values()),
        "fraction_of_bf16_matmul": ours["gflops"] / ceil["bf16"],
        "extrapolated_7_epoch_s": train_s + eval_s,
        "extrapolation": {"optimizer_steps": steps, "evaluations": n_evals, "tokens_counted_from": counted},
        "eval_share_extrapolated": eval_s / (train_s + eval_s),
        # the same config's committed run, if the ledger has one (needs the data for its hash)
        "committed_run": from_the_ledger(cfg, corpus.fingerprint) if corpus else None,
        "flops_note": "6*N*T per step, N without embedding lookups (n_flop_params); "
                      "attention-score FLOPs not counted",
        "measured_at": datetime.now(timezone.utc).isoformat(),
    }
    if device == "cuda":
        out["mfu_vs_989_tflops"] = ours["gflops"] / 989e3
    out_dir = out_dir or ledger.repo_root() / "results" / "bench"
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
              f"evaluations' share of that run: {r['eval_share_extrapolated']:.1%}"]
    c = r.get("committed_run")
    if c:
        ttq = c.get("time_to_baseline_s")
        lines.append(f"committed run {c['run']}: {c['wall_time_s'] / 60:.1f} min for 7 epochs (official "
                     f"{c['official_loss']:.4f}); evaluations and checkpoints "
                     f"{c['eval_and_checkpoint_share']:.1%} of it"
                     + (f"; beats the baseline's {c['baseline_loss']:.4f} after {ttq / 60:.1f} min"
                        if ttq else ""))
    return "\n".join(line for line in lines if line)


def main(args) -> int:
    cfg = make_config(args.profile, args.preset, **parse_overrides(args.set or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    # default label: preset, resolved precision, and any override other than the device (cpu-final-fp32.json)
    sets = [re.sub(r"[^A-Za-z0-9.]+", "", s) for s in args.set or [] if not s.startswith("device=")]
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    label = args.label or "-".join([args.preset, precision, *sets])
    r = run_bench(cfg, reps=args.reps, label=label, ops=args.ops, reference=not args.no_reference)
    print(format_table(r))
    return 0
