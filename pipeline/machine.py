"""What machine a figure was measured on: CPU model, threads, accelerator. Speeds are only
comparable side by side on one machine, so every run.json and bench report records this.

It also keeps what was measured once about this machine (`probed`): whether its CPU multiplies
bf16 natively (pipeline/precision.py), whether flex attention computes right on it
(pipeline/attention.py). Answers are cached per CPU model and feature flags, torch version and
ISA limits, so every run on one machine decides alike, and the probe's cost is paid once.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.json_files import write_json

# Environment variables that change which kernels torch and oneDNN pick: part of the probe cache key.
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def accelerator_name() -> str:
    """The GPU's name, or the CPU model without one."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()


# The CPU features that decide a run's pace: virtual machines name an AVX2-only EPYC and a Zen 4 with
# AVX-512 BF16 alike ("AMD EPYC"), so the model name alone does not say which machine a figure is from.
# x86 first; then Arm's (a Linux aarch64 /proc/cpuinfo lists them under "Features"): NEON, SVE, SVE2
# and the BF16 dot products.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve", "sve2", "bf16")


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """Which of SPEED_FLAGS this CPU (or the given /proc/cpuinfo text) reports; empty where there is none."""
    present = set(_cpu_flags(cpuinfo).split(":", 1)[-1].split())
    return [flag for flag in SPEED_FLAGS if flag in present]


def describe() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    limits = {k: os.environ[k] for k in ISA_ENV if k in os.environ}  # kernels capped below the CPU's own
    return {"cpu_model": cpu_model(), "cpu_features": cpu_features(), "isa_limits": limits,
            "torch_threads": torch.get_num_threads(), "gpu": gpu}


def label(record: dict) -> str:
    """One line naming the machine of a `describe()` record, for report headers: the GPU, or the CPU model
    with the speed flags it reports and any ISA limits ("AMD EPYC (avx2, avx512f, avx512_bf16)"). Records
    written before features were kept give the model name alone."""
    if record.get("gpu"):
        return record["gpu"]
    name = record.get("cpu_model") or "unknown CPU"
    if "cpu_features" not in record:
        return name
    features = ", ".join(record["cpu_features"]) or "none of " + ", ".join(SPEED_FLAGS[:4])
    limits = record.get("isa_limits") or {}
    limited = "; kernels limited by " + " ".join(f"{k}={v}" for k, v in limits.items()) if limits else ""
    return f"{name} ({features}{limited})"


def peak_memory(device: torch.device) -> dict:
    """The run's peak memory so far: on a GPU the most its tensors held (what a bigger batch would
    compete for), on a CPU the process's peak resident set (weights, optimizer, activations, data,
    and the libraries themselves)."""
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": torch.cuda.max_memory_allocated(device)}
    import resource  # Linux reports ru_maxrss in KiB

    return {"kind": "cpu_peak_rss", "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def probed(name: str, measure: Callable[[], dict]) -> dict:
    """`measure()`'s answer for this machine, from the cache or measured now and cached."""
    key = f"{name} | {cpu_model()} | flags {_cpu_flags_digest()} | torch {torch.__version__} | " + \
        (",".join(f"{k}={os.environ[k]}" for k in ISA_ENV if k in os.environ) or "no ISA limits")
    path = Path(os.environ.get("PIPELINE_CACHE_DIR", "data/cache")) / "machine.json"  # beside the corpus cache
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure()
        try:
            write_json(path, known)
        except OSError:
            pass  # a read-only cache only means measuring again next time
    return known[key]


def _cpu_flags_digest() -> str:
    """A short digest of the CPU's feature flags: virtual machines often name every EPYC just "AMD EPYC",
    whether it has AVX-512 BF16 or only AVX2, so the model name alone cannot key what was measured."""
    import hashlib

    return hashlib.sha256((_cpu_flags() or platform.machine()).encode()).hexdigest()[:8]


def _cpu_flags(cpuinfo: str | None = None) -> str:
    """The feature line of /proc/cpuinfo ("flags" on x86, "Features" on Arm), or "" where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    return next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")
