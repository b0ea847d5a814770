"""The host: what this machine is and what it gives a run, decided in one place.

- which device and precision a run gets here: `resolve_device`, `resolve_precision`, `resolve_execution`
  (`auto` -> cuda where torch sees one; bf16 where matmuls have native bf16, else fp32);
- whether bf16 matmuls are native (`native_bf16`: CUDA with bf16, or a CPU with AVX512-BF16/AMX), and the
  warning a run in emulated bf16 gets (`warn_emulated_bf16`);
- how fast a matmul runs here (`timed`, `matmul_seconds`: the warning's measure and the bench's ceiling);
- the facts a run records about where it ran: the machine (`hardware`) and the code (`git_state`).

Tests fake a kind of host by patching `host.native_bf16` (and `torch.cuda.is_available`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import subprocess
import sys
import timeit
from typing import Any

import torch

from .config import Config, code_version
from .ledger import repo_root


# ----------------------------------------------------------------------------- what the host can do
def native_bf16(device: str) -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def timed(fn, device: str = "cpu", warmup: int = 1, reps: int = 3) -> list[float]:
    """Seconds of each of `reps` calls of fn after `warmup` calls, each call with the device synchronised."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return timeit.repeat(lambda: (fn(), sync()), number=1, repeat=warmup + reps)[warmup:]


def matmul_seconds(n: int, dtype: torch.dtype, device: str = "cpu") -> list[float]:
    """Seconds of 3 n x n matmuls in `dtype` after one untimed (the bf16 warning, bench's matmul ceiling)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return timed(lambda: a @ b, device)


# ----------------------------------------------------------------------------- what a run gets here
def resolve_device(device: str, check: bool = True) -> str:
    """`auto` -> what this host has; check=False lets device=cuda through without one (to read a run back)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if check and device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA device; use device=cpu or auto")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """auto -> bf16 where matmuls have native bf16 support, else fp32 (emulated bf16 is ~50x slower)."""
    return precision if precision != "auto" else "bf16" if native_bf16(device) else "fp32"


def resolve_execution(cfg: Config, check: bool = True, elsewhere: bool = False) -> Config:
    """The config with `auto` device and precision replaced by what this host gives, and code_version 0 by the
    version this code runs it under (hashed and recorded). elsewhere=True resolves a run that another machine
    trains (a Dask worker): a pinned device is kept unchecked (the worker checks it), and `auto` precision on
    cuda is bf16 (what a GPU worker's probe gives) without probing this host's."""
    if elsewhere:
        device = resolve_device(cfg.device, check=False)
        precision = cfg.precision if cfg.precision != "auto" or device != "cuda" else "bf16"
    else:
        device = resolve_device(cfg.device, check)
        precision = cfg.precision
    return dataclasses.replace(cfg, device=device, precision=resolve_precision(precision, device),
                               code_version=code_version(cfg))


@functools.cache                                    # once per process
def warn_emulated_bf16(device: str, precision: str) -> None:
    """precision=bf16 on a CPU without native bf16 is emulated: say how slow, suggest fp32."""
    if device != "cpu" or precision != "bf16" or native_bf16("cpu"):
        return
    n = 256
    fp32, bf16 = (min(matmul_seconds(n, dtype)) for dtype in (torch.float32, torch.bfloat16))
    print(f"warning: precision=bf16 on a CPU without native bf16 (host.native_bf16 is false: no AVX512-BF16 or "
          f"AMX): bf16 matmuls are emulated, {bf16 / fp32:.0f}x slower than fp32 here (a {n}x{n} matmul timed "
          f"just now: {bf16 * 1e3:.2f} ms against {fp32 * 1e3:.3f} ms), so training will be several times slower; "
          f"use precision=fp32 (or auto, which picks fp32 on this CPU)", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- what a run records of it
def hardware(device: str) -> dict[str, Any]:
    """The machine a run trains on: device, CPU model and count, torch threads and version, Python; the GPU's
    name, or whether the CPU has native bf16 (a 60-minute run is different compute on the two kinds)."""
    info = {"device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "python": platform.python_version()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:   # which kind of CPU: bf16 matmuls native (AVX-512 BF16 / AMX) or emulated (AVX2 only)
        info["native_bf16"] = native_bf16("cpu")
    return info


def git_state() -> dict[str, Any]:
    """The code a run trains with: the checkout's commit and whether mainrun/ differs from it (None, None
    without git; $MAINRUN_GIT_COMMIT names the commit of a copy of the tree without .git)."""
    def git(*args: str) -> str:
        # a query only: no optional index refresh (whose index.lock a full disk or a kill would leave behind)
        done = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        return done.stdout.strip()
    try:
        commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", "mainrun"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if not commit:  # a copy of the tree without .git (a lent GPU machine): the caller may say which commit
        return {"git_commit": os.environ.get("MAINRUN_GIT_COMMIT") or None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}
