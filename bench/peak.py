"""This machine's dense matmul peak in GFLOP/s: the denominator of MFU.

Times square `torch.mm` at a few sizes and keeps the best repeat (2·n³ FLOPs each), so the
figure is what the BLAS backend really reaches here, not a datasheet number.

    .venv/bin/python bench/peak.py
"""

from __future__ import annotations

import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, device: torch.device | str = "cpu", sizes: tuple[int, ...] = (2048, 4096),
                  repeats: int = 5) -> float:
    """Best GFLOP/s of `torch.mm` over `sizes` × `repeats` (one untimed call per size first)."""
    device = torch.device(device)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.mm(a, b)  # warm-up: thread pool, packing buffers, kernel selection
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def default_device() -> torch.device:
    """The device the trainers will use (accelerate picks CUDA when there is one)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_sizes(device: torch.device) -> tuple[int, ...]:
    return (4096, 8192) if device.type == "cuda" else (2048, 4096)


if __name__ == "__main__":
    dev = default_device()
    print(f"device {dev}, {torch.get_num_threads()} threads")
    for dt in (torch.bfloat16, torch.float32):
        print(f"{str(dt).removeprefix('torch.'):>9}: {matmul_gflops(dt, dev, default_sizes(dev)):,.0f} GFLOP/s")
