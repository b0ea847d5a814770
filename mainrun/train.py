"""The training loop: the original's data order and JSONL events, resumable, recorded in the ledger.

    summary = mainrun.run(make_config("full", optimizer="adamw", lr=3e-4))

A run whose hash already has a finished summary is returned without training (unless force=True); a run
whose checkpoint exists resumes from it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import host, ledger
from .config import EVAL_BATCH, EVAL_BLOCK, Config, rules_check, run_hash, validate
from .data import Corpus, fingerprint, get_batch, prepare
from .evaluate import autocast, evaluate, full_coverage, official_coverage
from .ledger import atomic_write_bytes
from .model import GPT, Ensemble, GPTConfig
from .optim import build_optimizers, describe_groups, lr_multiplier, param_groups, set_lr


# A run stops and is recorded "diverged" (with the step and the rule) on a NaN/inf loss ("nonfinite"), a
# training loss after warmup above EXPLODE_FACTOR x ln(vocab_size), a uniform guess's loss ("train_loss"), or
# a validation loss above step 1's ("val_above_step1"). No committed run comes near either limit.
EXPLODE_FACTOR = 3.0
# Every STABILITY_EVERY optimizer steps (and at step 1) the log gets a "stability" event: the gradient norm
# before clipping and, per optim.param_groups group, its gradient norm and update-to-weight ratio
# |W_after - W_before| / |W_before|. It does not change the run's result (or hash).
STABILITY_EVERY = 25


@torch.no_grad()
def stability_probe(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, Any]:
    """Before an optimizer step: each group's gradient norm and a copy of its weights."""
    out: dict[str, Any] = {}
    for name, params in groups.items():
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        out[name] = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                     if grads else torch.zeros(()), [p.detach().clone() for p in params])
    return out


@torch.no_grad()
def stability_after(groups: dict[str, list[torch.nn.Parameter]], before: dict[str, Any]) -> dict[str, Any]:
    """After the step: the total and per-group gradient norms, and each group's update-to-weight ratio."""
    grad, ratio = {}, {}
    for name, params in groups.items():
        g, old = before[name]
        grad[name] = float(g)
        delta = sum(float(torch.sum((p.float() - o.float()) ** 2)) for p, o in zip(params, old))
        size = sum(float(torch.sum(o.float() ** 2)) for o in old)
        ratio[name] = math.sqrt(delta / size) if size > 0 else 0.0
    return {"grad_norm": math.sqrt(sum(v * v for v in grad.values())), "grad_norm_by_group": grad,
            "update_ratio": ratio}


def build_model(cfg: Config, vocab_size: int, eos_id: int | None = None) -> GPT | Ensemble:
    """Seeded as the original: torch.manual_seed(seed), then construction (ensemble members one by one)."""
    torch.manual_seed(cfg.rng_seed)
    random.seed(cfg.rng_seed)
    # every GPTConfig field but vocab_size is the Config field of the same name
    gcfg = GPTConfig(vocab_size, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)[1:]})
    model = GPT(gcfg) if cfg.ensemble == 1 else Ensemble([GPT(gcfg) for _ in range(cfg.ensemble)])
    if cfg.attn_mask == "title":
        model.eos_id = eos_id
    return model


class JsonlLog:
    """Appends the original's events ({"event", "timestamp", **fields}) to log.jsonl, and keeps them in memory
    (for checkpoints): if the file is replaced or deleted under the run (a `git stash`), the next event writes
    the whole log to the path again instead of appending to a file nobody sees."""

    def __init__(self, path: Path, restore: str | None = None):
        """restore: the log as it was at a checkpoint (resume); None starts a new log."""
        self.path = path
        self.lines: list[str] = [restore] if restore else []
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "w")
        self.f.write(self.text())
        self.f.flush()

    def log(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "timestamp": time.time(), **fields}, default=str) + "\n"
        self.lines.append(line)
        try:                                      # does the path still name the file this process writes?
            same = os.path.samestat(os.stat(self.path), os.fstat(self.f.fileno()))
        except FileNotFoundError:
            same = False
        if not same:
            old = self.f
            try:
                self._open()
                old.close()
                return
            except OSError as e:                  # keep training; the checkpoint still holds the whole log
                self.f = old
                print(f"warning: could not rewrite {self.path} ({e}); the log continues in memory and in "
                      f"checkpoints", flush=True)
        try:
            self.f.write(line)
            self.f.flush()
        except OSError as e:                      # a full disk: the error names the log (cli prints it)
            e.filename = e.filename or str(self.path)
            raise

    def text(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        self.f.close()


# Fault injection for tests/test_kill.py: with this set to S, a checkpoint write puts half its bytes in the temp
# file, says so on stderr and sleeps S seconds before the rest, so a test can kill the process mid-write.
WRITE_DELAY_ENV = "MAINRUN_CHECKPOINT_WRITE_DELAY_S"


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save through the same temp-file-then-rename writer as the data caches."""
    buf = io.BytesIO()                    # saved here, written by Python: a full disk is an OSError naming
    torch.save(obj, buf)                  # the file, not torch's "unexpected pos"
    data = buf.getvalue()
    delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)
    if delay <= 0:
        atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(data))
        return

    def slow_write(tmp: str) -> None:
        half = len(data) // 2
        with open(tmp, "wb") as f:
            f.write(data[:half])
            f.flush()
            os.fsync(f.fileno())
            print(f"{WRITE_DELAY_ENV}: {half} of {len(data)} bytes of {path.name} in {tmp}; sleeping {delay} s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
            f.write(data[half:])
    atomic_write_bytes(path, slow_write)


# ----------------------------------------------------------------------------- before a run starts
@dataclass
class Job:
    """A run before it starts, as train.run and the Dask engine's driver (mainrun.cluster) both see it."""
    cfg: Config              # validated; device, precision and code version resolved (host.resolve_execution)
    hash: str
    source: dict             # the data as the run's records name it (data.file_record or hub)
    found: Path | None       # its run folder, if the ledger has one
    ckpt_dir: Path           # its checkpoint folder
    summary: dict | None = None   # (resolve_job) the ledger's finished/diverged/pruned summary, or a stub
    label: str = ""

    @property
    def done(self) -> bool:
        return self.summary is not None and self.summary.get("status") in ledger.TERMINAL

    def folder(self) -> Path:
        """Its run folder: the ledger's (looked up again: another process may have made it since), else the one
        it will make, <name>-<hash>."""
        root = ledger.results_root(self.cfg.profile)
        return ledger.find_run(root, self.hash) or root / "runs" / f"{self.cfg.run_name}-{self.hash}"


def locate(cfg: Config, check: bool = False, elsewhere: bool = False, label: str = "") -> Job:
    """What a run needs before it starts, written once: the config validated and resolved for this host
    (host.resolve_execution; check=False lets a GPU run be read back on any host, elsewhere=True resolves a
    run a worker trains), its run hash, its data, its run folder if the ledger has one, its checkpoint folder.
    Trains no tokenizer."""
    cfg = host.resolve_execution(validate(cfg), check, elsewhere)
    fp, source = fingerprint(cfg)
    h = run_hash(cfg, fp)
    return Job(cfg, h, source, ledger.find_run(ledger.results_root(cfg.profile), h), ledger.checkpoints_root() / h,
               label=label)


def resolve_job(cfg: Config, local: bool = False, label: str = "", force: bool = False) -> Job:
    """A point of a study as a driver sees it before sending it out: located (`locate`: local=True resolves and
    checks it as train.run does on this host; else for a worker) with its data prepared, and its ledger state.
    A damaged summary stops the study here, before anything is sent; with force, a run whose log does not show
    that it ended is trained again."""
    job = locate(cfg, check=local, elsewhere=not local, label=label)
    prepare(job.cfg)                               # the data checked and tokenized here, before anything is sent
    summary = None
    if job.found is not None:
        if force:
            refuse_discarding(job.found)
        try:
            summary = ledger.finished_summary(job.found)
        except ledger.DamagedRun:
            if not force:
                raise
    job.summary = summary or not_trained(job.cfg, job.hash, job.found)
    return job


def pruner(thresholds: dict[int, float] | None) -> Callable[[int, float], bool] | None:
    """run's on_eval from per-step thresholds: stop when the best validation loss so far is above the
    threshold of this evaluation step (Optuna's MedianPruner rule with the medians given)."""
    if not thresholds:
        return None
    best = [float("inf")]

    def on_eval(step: int, val: float) -> bool:
        best[0] = min(best[0], val)
        return step in thresholds and best[0] > thresholds[step]
    return on_eval


def run(cfg: Config, force: bool = False, on_step: Callable[[int], None] | None = None,
        progress: bool = True, train: bool = True, on_eval: Callable[[int, float], bool] | None = None,
        wait: bool = False, discard_finished: bool = False, restart: bool = False) -> dict:
    """Train `cfg` (or return its recorded result) and return its summary dict.

    on_eval(step, official_val_loss) after every evaluation: True stops the run there, recorded "pruned".
    train=False only reads the ledger: a summary, else a stub with status "incomplete" or "missing".
    One process trains a run at a time (ledger.Lock on its run folder and its checkpoint folder): another
    refuses, naming the holder, or with wait=True waits and returns its result (or resumes a dead holder's
    run). force=True never discards a run whose log shows it ended, unless discard_finished=True. restart=True
    starts an unfinished run over from step 0 (its checkpoint damaged, say); a finished one is returned."""
    job = locate(cfg)                               # a GPU run is read back on any host; no tokenizer trained
    cfg, h, run_dir, ckpt_dir = job.cfg, job.hash, job.found, job.ckpt_dir
    if run_dir is not None and not force and (summary := ledger.finished_summary(run_dir)) is not None:
        return summary
    if not train:
        return not_trained(cfg, h, run_dir)
    host.resolve_device(cfg.device)                 # training needs the pinned device to exist
    if force and run_dir is not None and not discard_finished:
        refuse_discarding(run_dir)
    host.warn_emulated_bf16(cfg.device, cfg.precision)
    corpus = prepare(cfg)
    data_sizes(cfg, corpus)
    run_dir = run_dir or job.folder()
    record = ledger.lock_record("training", run_dir)
    with tidied(run_dir), ledger.hold(run_dir / ".lock", record, f"run {run_dir.name} is being trained by",
                     "wait for it (its result goes into this ledger), or stop it and start again to resume", wait):
        if not force and (summary := ledger.finished_summary(run_dir)) is not None:
            return summary                                   # the process waited for has finished it
        with ledger.hold(ckpt_dir / ".lock", record, f"the checkpoints of run {run_dir.name} ({ckpt_dir}) are "
                         f"being written by", "wait for it to end and run this again, or give this run a "
                         "checkpoint folder of its own (MAINRUN_CHECKPOINTS)", wait):
            if force or restart:
                _clear(run_dir)
                _clear(ckpt_dir)
            official, reasons = rules_check(cfg, corpus.source)
            data = cfg.data if cfg.data in ("", "hub") else ledger.display_path(cfg.data)   # no absolute path
            meta = {"config": {**cfg.to_dict(), "data": data}, "hash": h, "data_fingerprint": corpus.fingerprint,
                    "data_source": corpus.source, "official": official, "official_reasons": reasons,
                    "eval_shape": [EVAL_BATCH, EVAL_BLOCK]}
            ledger.atomic_write_json(run_dir / "config.json", meta)
            check_resumable(run_dir, ckpt_dir, cfg)
            return Trainer(cfg, corpus, cfg.device, run_dir, ckpt_dir, meta).train(on_step, progress, on_eval)


def _clear(folder: Path) -> None:
    """Remove everything in a folder this process holds, except its lock file."""
    for p in folder.iterdir() if folder.exists() else []:
        if p.name != ".lock":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def refuse_discarding(run_dir: Path) -> None:
    """force=True is refused where the log shows the run ended but its summary is damaged or missing."""
    try:
        if ledger.finished_summary(run_dir) is not None:
            return                                     # an intact summary: force retrains it, as asked
    except ledger.DamagedRun:
        pass
    outcome = ledger.log_outcome(run_dir / "log.jsonl")
    if outcome is not None:
        raise ledger.DamagedRun(
            f"run {run_dir.name} has no readable summary.json but its log.jsonl shows it {outcome}: --force would "
            f"discard it. Rebuild its summary with `python -m mainrun repair {run_dir.name}`, or add "
            f"--discard-finished (discard_finished=True) to start it over")


def not_trained(cfg: Config, h: str, run_dir: Path | None) -> dict:
    """What the ledger knows of a run that has no final summary (run(..., train=False))."""
    out: dict[str, Any] = {"name": cfg.run_name, "hash": h, "status": "missing", "final_val_loss": None,
                           "dir": ledger.display_path(run_dir) if run_dir else None}
    if run_dir is not None and (run_dir / "log.jsonl").exists():
        progress = ledger.log_progress(run_dir / "log.jsonl")
        progress.pop("device")
        progress["last_step"] = progress["last_step"] or 0
        out.update(status="incomplete", **progress)
    return out


def check_resumable(run_dir: Path, ckpt_dir: Path, cfg: Config) -> None:
    """Refuse to silently restart a run whose log is past a checkpoint that cannot be found here (a log that
    ends at the first checkpoint step was cut off while writing it: no checkpoint was ever there)."""
    if (ckpt_dir / "ckpt.pt").exists() or not cfg.checkpoint_every or not (run_dir / "log.jsonl").exists():
        return
    last = ledger.log_progress(run_dir / "log.jsonl")["last_step"]
    if last and last > cfg.checkpoint_every:
        raise RuntimeError(f"run {run_dir.name} has logged {last} steps but no checkpoint is under {ckpt_dir}; "
                           f"set MAINRUN_CHECKPOINTS to the folder that holds <hash>/ckpt.pt, or force=True "
                           f"(--force) to start it over")


def load_saved(path: Path, what: str) -> dict:
    """torch.load of a checkpoint or final weights, on the CPU; a damaged file (truncated, empty, not torch's)
    is a DamagedRun naming it and `what` to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch says RuntimeError, EOFError, UnpicklingError...
        raise ledger.DamagedRun(f"{path} is damaged ({type(e).__name__}: {str(e).split('. ')[0][:120]}); "
                                f"{what}") from None


def data_sizes(cfg: Config, corpus: Corpus) -> tuple[int, float]:
    """(optimizer steps per epoch, official coverage of the validation split); too little data for one step or
    one official span is refused before any run folder is made."""
    tokens_per_batch = cfg.block_size * cfg.batch_size    # micro-batches per epoch as the original, then steps
    steps_per_epoch = len(corpus.train_ids) // tokens_per_batch // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"the training split has {len(corpus.train_ids):,} tokens: fewer than one optimizer "
                         f"step of {tokens_per_batch * cfg.grad_accum:,}; lower batch_size or grad_accum")
    scored, coverage = official_coverage(len(corpus.val_ids))
    if scored == 0:
        raise ValueError(f"the validation split has {len(corpus.val_ids):,} tokens, fewer than one official "
                         f"span of {EVAL_BATCH * EVAL_BLOCK + 1:,}; raise num_titles or val_frac")
    return steps_per_epoch, coverage


@contextlib.contextmanager
def tidied(run_dir: Path):
    """A run folder this process made and left empty (a refusal, a lock race lost) is removed on the way out."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):          # not empty, or gone: nothing to tidy
            run_dir.rmdir()


class Trainer:
    """One run's model, optimizers and loop: train() resumes from the checkpoint, logs, and writes the summary."""

    def __init__(self, cfg: Config, corpus: Corpus, device: str, run_dir: Path, ckpt_dir: Path, meta: dict):
        """meta: the run's config.json (its config as recorded, hash, data, whether it is official)."""
        self.cfg, self.corpus, self.device = cfg, corpus, device
        self.run_dir, self.ckpt_dir, self.meta = run_dir, ckpt_dir, meta
        self.model = build_model(cfg, corpus.vocab_size, corpus.eos_id).to(device)
        self.n_params = self.model.num_params()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.opts = build_optimizers(cfg, self.model, device)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema > 0 else None
        self.step_fn = torch.compile(self.model) if cfg.compile else self.model
        self.steps_per_epoch, self.coverage = data_sizes(cfg, corpus)
        self.max_steps = cfg.epochs * self.steps_per_epoch
        self.eval_interval = max(1, self.steps_per_epoch // cfg.evals_per_epoch)
        self.warmup_steps = int(round(cfg.warmup_frac * self.max_steps))
        self.explode_at = EXPLODE_FACTOR * math.log(corpus.vocab_size)
        # training losses stay on the device and are read every log_every steps (each read is a sync)
        self.log_every = 1 if device == "cpu" else 25
        self.groups = param_groups(self.model)   # hidden / embed / other: the stability probe's groups

    def objective(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy to log, loss to minimise). R-Drop: two passes, their mean CE plus rdrop x their
        symmetric KL (mean of both directions, summed over the vocabulary, averaged over tokens). z_loss adds
        z_loss x the mean squared log-partition of the first pass's logits (PaLM)."""
        logits, loss = self.step_fn(xb, yb)
        if self.cfg.ensemble > 1:   # the loss is the members' mean CE: x k gives each member its own CE's gradient
            return loss, loss * self.cfg.ensemble
        z = self.cfg.z_loss * logits.float().logsumexp(-1).square().mean() if self.cfg.z_loss > 0 else None
        plus_z = (lambda x: x) if z is None else (lambda x: x + z)  # noqa: E731
        if self.cfg.rdrop <= 0:
            return loss, plus_z(loss)
        logits2, loss2 = self.step_fn(xb, yb)
        lp1 = F.log_softmax(logits.float(), dim=-1)
        lp2 = F.log_softmax(logits2.float(), dim=-1)
        kl = 0.5 * (F.kl_div(lp1, lp2, log_target=True, reduction="none")
                    + F.kl_div(lp2, lp1, log_target=True, reduction="none")).sum(-1).mean()
        ce = 0.5 * (loss + loss2)
        return ce, plus_z(ce + self.cfg.rdrop * kl)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, ptr: int, state: dict, log: JsonlLog) -> None:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
               **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}
        _atomic_save({"model": self.model.state_dict(), "opts": [o.state_dict() for o in self.opts],
                      "ema": self.ema.state_dict() if self.ema else None, "step": step, "ptr": ptr,
                      "rng": rng, "log_text": log.text(), "state": state,
                      "config": self.cfg.to_dict()}, self.ckpt_dir / "ckpt.pt")

    def load_checkpoint(self) -> dict | None:
        # A writer killed mid-write leaves its temp file (<name>.<random>.tmp) beside an intact old file; this
        # process holds the folder's lock, so no live writer owns it: remove it.
        for partial in self.ckpt_dir.glob("*.pt.*.tmp"):
            partial.unlink(missing_ok=True)
        path = self.ckpt_dir / "ckpt.pt"
        if not path.exists():
            return None
        # on the CPU first: RNG states must stay CPU byte tensors; load_state_dict moves the rest
        ck = load_saved(path, "start the run over from step 0 with --restart (run(..., restart=True))")
        self.model.load_state_dict(ck["model"])
        for o, s in zip(self.opts, ck["opts"]):
            o.load_state_dict(s)
        if self.ema and ck["ema"] is not None:
            self.ema.load_state_dict(ck["ema"])
        torch.set_rng_state(ck["rng"]["torch"])
        random.setstate(ck["rng"]["python"])
        np.random.set_state(ck["rng"]["numpy"])
        if "cuda" in ck["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        return ck

    # ------------------------------------------------------------------ the loop
    def train(self, on_step: Callable[[int], None] | None = None, progress: bool = True,
              on_eval: Callable[[int, float], bool] | None = None) -> dict:
        cfg, c = self.cfg, self.corpus
        ck = self.load_checkpoint()
        log = JsonlLog(self.run_dir / "log.jsonl", restore=ck["log_text"] if ck else None)
        state = ck["state"] if ck else {"elapsed": 0.0, "train_time": 0.0, "best": math.inf, "last_val": None,
                                        "final_val": None, "resumes": 0,
                                        "started_at": datetime.now(timezone.utc).isoformat()}
        step, ptr = (ck["step"], ck["ptr"]) if ck else (0, 0)
        code = {**host.git_state(), "torch_version": torch.__version__, "device": self.device}
        if ck:
            state["resumes"] += 1
            state.setdefault("code", [{"git_commit": None, "note": "started before code was recorded"}])
            state["code"].append(code)
            log.log("resumed", step=step, resumes=state["resumes"], **code)
        else:
            state["code"] = [code]
            log.log("hyperparameters_configured", **self.meta["config"], run_hash=self.meta["hash"])
            log.log("device_info", **host.hardware(self.device))
            log.log("dataset_info", titles_count=c.n_train_titles, epochs=cfg.epochs,
                    batches_per_epoch=self.steps_per_epoch, tokens_per_epoch=len(c.train_ids),
                    vocab_size=c.vocab_size, val_tokens=len(c.val_ids), val_chars=c.val_chars,
                    official_coverage=self.coverage, data_fingerprint=c.fingerprint)
            log.log("model_info", parameters_count=self.n_params, param_groups=describe_groups(self.model))
        t_start = time.time() - state["elapsed"]
        self.model.train()
        bar = tqdm(total=self.max_steps, initial=step, desc=cfg.run_name, disable=not progress,
                   dynamic_ncols=True, mininterval=1.0)
        status, rule = "finished", None
        pending: list[tuple] = []   # (step, loss on the device, elapsed, lr) not yet read by the host
        t_seg = time.time()         # start of the current stretch of training steps (evals excluded)
        try:
            while step < self.max_steps:
                lr = set_lr(self.opts, lr_multiplier(cfg, step, self.max_steps))
                loss_sum = torch.zeros((), device=self.device)
                for _ in range(cfg.grad_accum):
                    xb, yb, ptr = get_batch(c.train_ids, ptr, cfg.block_size, cfg.batch_size)
                    xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
                    with autocast(self.device, cfg.precision):
                        loss, objective = self.objective(xb, yb)
                    (objective / cfg.grad_accum).backward()
                    loss_sum += loss.detach()
                probe = step + 1 == 1 or (step + 1) % STABILITY_EVERY == 0   # the step about to be taken
                before = stability_probe(self.groups) if probe else None
                if cfg.grad_clip > 0:   # an ensemble's members are clipped one by one, as if trained alone
                    for part in (self.model.members if cfg.ensemble > 1 else [self.model]):
                        torch.nn.utils.clip_grad_norm_(part.parameters(), cfg.grad_clip)
                for o in self.opts:   # disjoint parameters: zeroing one's grads leaves the next one's step alone
                    o.step()
                    o.zero_grad(set_to_none=True)
                if before is not None:
                    log.log("stability", step=step + 1, **stability_after(self.groups, before))
                if self.ema:
                    self.ema.update_parameters(self.model)
                step += 1
                pending.append((step, loss_sum / cfg.grad_accum, time.time() - t_start, lr))
                bar.update(1)
                eval_due = step == 1 or step % self.eval_interval == 0 or step == self.max_steps
                ckpt_due = bool(cfg.checkpoint_every) and not step % cfg.checkpoint_every and step < self.max_steps
                if len(pending) >= self.log_every or eval_due or ckpt_due:
                    bad = self.flush(pending, log, bar, state)      # the one host sync
                    now = time.time()
                    state["train_time"] += now - t_seg
                    state["elapsed"], t_seg = now - t_start, now
                    if bad is not None:
                        status, (step, rule) = "diverged", bad
                        break
                if eval_due:
                    at = state["elapsed"]                     # as the original: time before the evaluation
                    val = evaluate(self.ema.module if self.ema else self.model, c.val_ids, c.val_chars,
                                   self.device, cfg.eval_precision)
                    state["elapsed"] = time.time() - t_start
                    state["last_val"], state["final_val"] = round(val, 4), val
                    state["best"] = min(state["best"], val)
                    log.log("validation_step", step=step, max_steps=self.max_steps, loss=val, elapsed_time=at)
                    if progress:
                        tqdm.write(f"[{step:>5}/{self.max_steps}] validation_step: loss={val:.6f} "
                                   f"time={state['elapsed']:.1f}s")
                    state.setdefault("first_val", val)
                    rule = ("nonfinite" if not math.isfinite(val)
                            else "val_above_step1" if val > state["first_val"] else None)
                    if rule is not None:
                        status = "diverged"
                        log.log("diverged", step=step, loss=str(val), rule=rule)
                        break
                    if on_eval is not None and on_eval(step, val):   # a search's pruner; never after a rule fired
                        status = "pruned"
                        log.log("pruned", step=step, loss=val)
                        break
                if ckpt_due:
                    self.save_checkpoint(step, ptr, state, log)
                if eval_due or ckpt_due:
                    t_seg = time.time()
                if on_step is not None:
                    on_step(step)
        finally:
            bar.close()
        return self.finish(status, step, state, log, rule)

    def flush(self, pending: list[tuple], log: JsonlLog, bar, state: dict) -> tuple[int, str] | None:
        """Log the pending training steps; returns (step, rule) of the first step whose loss is not finite
        or has exploded (see EXPLODE_FACTOR), if any."""
        losses = torch.stack([p[1] for p in pending]).tolist()
        pending_steps = list(pending)
        pending.clear()
        for (step, _, elapsed, lr), loss in zip(pending_steps, losses):
            log.log("training_step", step=step, max_steps=self.max_steps, loss=loss, elapsed_time=elapsed, lr=lr)
            rule = ("nonfinite" if not math.isfinite(loss)
                    else "train_loss" if step > self.warmup_steps and loss > self.explode_at else None)
            if rule is not None:
                log.log("diverged", step=step, loss=str(loss), rule=rule,
                        **({"limit": self.explode_at} if rule == "train_loss" else {}))
                return step, rule
        bar.set_postfix(loss=f"{losses[-1]:.4f}", val=state["last_val"], refresh=False)
        return None

    def finish(self, status: str, step: int, state: dict, log: JsonlLog, rule: str | None = None) -> dict:
        cfg, c = self.cfg, self.corpus
        m = self.ema.module if self.ema else self.model
        extra: dict[str, Any] = {}
        if status == "finished":
            extra = full_coverage(m, c.val_ids, c.val_chars, self.device, cfg.eval_precision)
            log.log("full_coverage", step=step, **extra, official_coverage=self.coverage)
            _atomic_save({"model": m.state_dict(), "config": cfg.to_dict(), "vocab_size": c.vocab_size,
                          "eos_id": c.eos_id, "tokenizer_path": c.tokenizer_path}, self.ckpt_dir / "final.pt")
        log.close()
        train_tokens = step * cfg.grad_accum * cfg.batch_size * cfg.block_size
        summary = {
            **ledger.summary_fields(self.meta, status, step, rule, state["final_val"], extra),
            "best_val_loss": state["best"] if math.isfinite(state["best"]) else None,
            "official_coverage": self.coverage, "val_chars": c.val_chars, "val_tokens": len(c.val_ids),
            "max_steps": self.max_steps, "n_params": self.n_params,
            "wall_time_s": state["elapsed"], "train_time_s": state["train_time"],
            "tokens_per_s": train_tokens / state["train_time"] if state["train_time"] else None,
            "peak_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "resumes": state["resumes"],
            "started_at": state["started_at"], "finished_at": datetime.now(timezone.utc).isoformat(),
            "hardware": host.hardware(self.device), **state["code"][0], "code_history": state["code"],
        }
        if self.device == "cuda":
            summary["peak_cuda_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        ledger.atomic_write_json(self.run_dir / "summary.json", summary)
        (self.ckpt_dir / "ckpt.pt").unlink(missing_ok=True)
        return summary
