"""The LM head and its cross-entropy: full logits against a chunked loss, eager and compiled.

A small model's vocabulary dominates its activations: one micro-batch of the `cpu` recipe has
8,192 tokens × 8,192 logits, 268 MB in fp32 before the softmax and its gradient. A chunked loss
computes the logits a few thousand tokens at a time and recomputes them in the backward pass
(activation checkpointing), so they never exist all at once. It trades memory for one more
logits matmul. This measures both sides of that trade for one micro-batch, forward + backward:

    make bench-loss                                              # the cpu recipe's sizes
    .venv/bin/python bench/lm_head_loss.py --tokens 16384 --vocab 32000 --hidden 512

Prints a table and writes reports/bench/lm_head_loss.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from attention_speed import PeakMemory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline.json_files import write_json  # noqa: E402


def full_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What transformers does: every logit at once, upcast to fp32 for the softmax."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = hidden @ weight.t()
    return F.cross_entropy(logits.float(), targets)


def _chunk_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = hidden @ weight.t()
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """The same mean NLL, `chunk` tokens at a time; each chunk's logits are recomputed in backward."""
    total = sum(checkpoint(_chunk_nll, hidden[s:s + chunk], weight, targets[s:s + chunk], use_reentrant=False)
                for s in range(0, len(targets), chunk))
    return total / len(targets)


def measure(loss_fn, hidden, weight, targets, repeats: int) -> tuple[float, int, float]:
    """(median seconds, peak extra bytes, loss) of forward + backward."""
    def call():
        hidden.grad = weight.grad = None
        loss = loss_fn(hidden, weight, targets)
        loss.backward()
        return loss.item()

    call()  # compilation, first allocations
    times, peaks = [], []
    for _ in range(repeats):
        with PeakMemory(torch.device("cpu")) as memory:
            t0 = time.perf_counter()
            loss = call()
            times.append(time.perf_counter() - t0)
        peaks.append(memory.peak)
    return statistics.median(times), max(peaks), loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16 * 512, help="tokens per micro-batch (cpu recipe: 16 × 512)")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="reports/bench/lm_head_loss.json")
    a = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(a.tokens, a.hidden, generator=g, dtype=torch.bfloat16).requires_grad_()
    weight = (0.02 * torch.randn(a.vocab, a.hidden, generator=g)).requires_grad_()  # fp32 master weights
    targets = torch.randint(0, a.vocab, (a.tokens,), generator=g)

    def chunked(h, w, t):
        return chunked_loss(h, w, t, a.chunk)

    rows = []
    for name, fn in (("full, eager", full_loss), ("full, compiled", torch.compile(full_loss)),
                     (f"chunked {a.chunk}, eager", chunked), (f"chunked {a.chunk}, compiled", torch.compile(chunked))):
        seconds, peak, loss = measure(fn, hidden, weight, targets, a.repeats)
        rows.append({"loss": name, "seconds": seconds, "peak_bytes": peak, "value": loss})
        print(f"{name:>24}: {seconds * 1e3:7.0f} ms  {peak / 2**20:7.0f} MiB  (loss {loss:.4f})")
    values = [r["value"] for r in rows]
    assert max(values) - min(values) < 1e-3, f"the losses disagree: {values}"  # same function, four ways

    out = Path(a.out)
    write_json(out, {"args": vars(a), "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows})
    print(f"→ {out}")


if __name__ == "__main__":
    main()
