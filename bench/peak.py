"""This machine's dense matmul peak in GFLOP/s: the denominator of MFU.

Times square `torch.mm` at a few sizes and keeps the best repeat (2·n³ FLOPs each), so the
figure is what the BLAS backend really reaches here, not a datasheet number. MFU is measured
against the peak of the precision a run trains in (`training_peak`).

    .venv/bin/python bench/peak.py
    .venv/bin/python bench/peak.py --sizes 512      # the product pipeline/precision.py's probe times
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline import precision  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


SLOW_CALL_SECONDS = 1.0  # a call slower than this (emulated bf16: ~9 s at 2048²) is timed once, and no larger size


def matmul_gflops(dtype: torch.dtype, device: torch.device | str = "cpu", sizes: tuple[int, ...] = (2048, 4096),
                  repeats: int = 5) -> float:
    """Best GFLOP/s of `torch.mm` over `sizes` × `repeats` (one untimed call per size first).

    A dtype the hardware only emulates would take minutes at the larger sizes: after one slow call
    the figure is already clear, so the measurement stops there."""
    device = torch.device(device)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        _sync(device)
        t0 = time.perf_counter()
        c = torch.mm(a, b)  # warm-up: thread pool, packing buffers, kernel selection
        _sync(device)
        slow = time.perf_counter() - t0 > SLOW_CALL_SECONDS
        for _ in range(1 if slow else repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        if slow:
            break
    return best


def training_peak(device: torch.device) -> tuple[str, float]:
    """(dtype name, GFLOP/s): the peak in the precision `mixed_precision: auto` trains in on `device`,
    the honest denominator of MFU there (pipeline/precision.py decides: fp32 on a CPU that emulates bf16)."""
    mode = precision.resolve("auto", device).mode
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16 if mode == "fp16" else torch.float32
    return str(dtype).removeprefix("torch."), matmul_gflops(dtype, device, default_sizes(device))


def default_device() -> torch.device:
    """The device the trainers will use (accelerate picks CUDA when there is one)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_sizes(device: torch.device) -> tuple[int, ...]:
    return (4096, 8192) if device.type == "cuda" else (2048, 4096)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", help="square sizes n (default: 2048 4096, on CUDA 4096 8192)")
    dev = default_device()
    sizes = tuple(ap.parse_args().sizes or default_sizes(dev))
    print(f"device {dev}, {torch.get_num_threads()} threads, n = {' '.join(map(str, sizes))}")
    for dt in (torch.bfloat16, torch.float32):
        print(f"{str(dt).removeprefix('torch.'):>9}: {matmul_gflops(dt, dev, sizes):,.0f} GFLOP/s")
