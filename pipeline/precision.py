"""Which precision a run trains in: `mixed_precision: auto` resolved for this machine.

bf16 autocast pays only where the hardware multiplies bf16 natively: a CUDA GPU with bf16 (Ampere
on), or a CPU with AMX or AVX-512 BF16. On any other CPU (an AVX2-only EPYC, say) oneDNN emulates
bf16: a matmul ran ~30x slower than fp32 there, and the default pretraining recipe could not get
past its warmup. So `auto` is bf16 on a bf16 GPU or a native-bf16 CPU, fp32 ("no") elsewhere.

Whether a CPU's bf16 is native is measured, not guessed from flags: small bf16 and fp32 matmuls are
timed in turns, and bf16 counts as native when it runs at least NATIVE_RATIO of fp32's speed.
The probe tells emulation from hardware, which differ by an order of magnitude: a Zen 4 with
AVX-512 BF16 measured 1.1x to 4.8x (1.1x on one thread while other work shared the cores), the same
CPU limited to AVX2 0.01x to 0.12x. The
answer is cached per machine (`machine.probed`), so every run on a machine (and a resumed run)
resolves the same way. PIPELINE_CPU_BF16=1/0 states the answer instead (tests, or
a user who knows).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache

import torch

from pipeline import machine

CPU_BF16_ENV = "PIPELINE_CPU_BF16"
# bf16 at half fp32's speed or better is native: between the 0.12x seen at most from emulation and the 1.1x seen
# at least from hardware, on a busy machine (a threshold of 1.2 once called a busy Zen 4 "emulated").
NATIVE_RATIO = 0.5
# The timed matmul: a few ms in fp32, about 0.15 s when bf16 is emulated.
PROBE_SIZE = 512


@dataclass(frozen=True)
class CpuBf16:
    native: bool
    speedup: float  # bf16 GFLOP/s over fp32 GFLOP/s in the probe (nan when stated by the environment)


@dataclass(frozen=True)
class Precision:
    requested: str  # what the recipe says: auto, no, bf16 or fp16
    mode: str  # what the run uses: no, bf16 or fp16 (accelerate's mixed_precision)
    reason: str  # one line: why, for the start of the log and for run.json / eval.json

    def record(self) -> dict:
        return {"requested": self.requested, "mode": self.mode, "reason": self.reason}


def run_device() -> torch.device:
    """The device a run trains on: a GPU where torch sees one (as pipeline/trainer.py's accelerator picks)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve(requested: str, device: torch.device) -> Precision:
    """The precision a run asking for `requested` gets on `device`."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if requested != "auto":
            return Precision(requested, requested, f"{requested} as the recipe asks, on {machine.accelerator_name()}")
        mode = "bf16" if bf16 else "no"
        why = "supports bf16" if bf16 else "has no bf16: fp32"
        return Precision(requested, mode, f"auto: {machine.accelerator_name()} {why}")
    cpu = cpu_bf16()
    if requested == "auto":
        if cpu.native:
            return Precision(requested, "bf16", f"auto: this CPU multiplies bf16 natively{_speedup(cpu)}")
        return Precision(requested, "no", f"auto: fp32, since this CPU emulates bf16{_speedup(cpu)}")
    if requested == "bf16" and not cpu.native:
        return Precision(requested, "bf16", f"bf16 as the recipe asks, though this CPU emulates it{_speedup(cpu)}: "
                                            "expect a slow run; mixed_precision=auto trains in fp32 here")
    return Precision(requested, requested, f"{requested} as the recipe asks")


def emulated_bf16_note(mode: str, device: torch.device) -> str:
    """For error messages about pace: names emulated bf16 when it is the likely cause, else ''."""
    if mode != "bf16" or device.type != "cpu" or cpu_bf16().native:
        return ""
    return f"; the steps run in bf16, which this CPU emulates{_speedup(cpu_bf16())}: set mixed_precision=auto (fp32 here)"


@cache
def cpu_bf16() -> CpuBf16:
    """Whether this CPU's bf16 matmuls are native: stated by PIPELINE_CPU_BF16, else measured once per machine."""
    stated = os.environ.get(CPU_BF16_ENV)
    if stated is not None:
        return CpuBf16(native=stated.strip().lower() in ("1", "true", "yes"), speedup=float("nan"))
    return CpuBf16(**machine.probed(f"cpu_bf16_{PROBE_SIZE}", _measure))


def bf16_matmul_speedup(size: int = PROBE_SIZE, repeats: int = 8, budget_s: float = 2.0) -> float:
    """bf16 over fp32 throughput of a size³ CPU matmul: the fastest of up to `repeats` calls of each.

    The two dtypes take turns, so a burst of other work slows both alike, and the fastest call of each is
    an undisturbed one. (Timing them one after the other, and stopping at the first slow bf16 call, once
    called a Zen 4's native bf16 emulated while two fine-tunes shared its cores: 0.17x, against 1.5x to
    2.6x in three probes beside the same work.) Past `budget_s` three rounds say enough: emulated bf16
    takes ~0.15 s a call."""
    operands = {dtype: (torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype))
                for dtype in (torch.float32, torch.bfloat16)}
    for a, b in operands.values():
        torch.mm(a, b)  # the first call packs weights and picks kernels
    best = dict.fromkeys(operands, float("inf"))
    deadline = time.perf_counter() + budget_s
    for round_ in range(repeats):
        for dtype, (a, b) in operands.items():
            t0 = time.perf_counter()
            torch.mm(a, b)
            best[dtype] = min(best[dtype], time.perf_counter() - t0)
        if round_ >= 2 and time.perf_counter() > deadline:
            break
    return best[torch.float32] / best[torch.bfloat16]


def _measure() -> dict:
    speedup = bf16_matmul_speedup()
    return {"native": speedup >= NATIVE_RATIO, "speedup": round(speedup, 3)}


def _speedup(cpu: CpuBf16) -> str:
    if cpu.speedup != cpu.speedup:  # nan: stated, not measured
        return f" ({CPU_BF16_ENV} says so)"
    if cpu.speedup >= 1:
        return f" (a bf16 matmul ran {cpu.speedup:.1f}x as fast as fp32)"
    return f" (a bf16 matmul ran {1 / cpu.speedup:.0f}x slower than fp32)"
