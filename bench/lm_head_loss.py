"""The LM head and its cross-entropy: full logits against two chunked losses, eager and compiled.

A small model's vocabulary dominates its activations: one micro-batch of the `cpu` recipe has
8,192 tokens × 8,192 logits, 268 MB in fp32 before the softmax and its gradient. Two ways to
never hold them all at once, `chunk` tokens at a time:

- recomputed: each chunk's logits are recomputed in the backward pass (activation
  checkpointing). It trades memory for one more logits matmul.
- gradient in forward: each chunk's softmax gradient is formed right after its loss, while its
  logits are still in cache, and multiplied into the hidden states' and the head's gradients at
  once; backward only scales them. The same three matmuls as the full loss, none recomputed.

This measures every way for one micro-batch, forward + backward, in the precision a pretraining
run gets here (`mixed_precision: auto`: bf16 autocast on a CPU with native bf16, else fp32):

    make bench-loss                                              # 16 × 512 tokens, vocabulary 8,192, hidden 384 (the old cpu width)
    .venv/bin/python bench/lm_head_loss.py --hidden 128          # the fp32_overrides shape
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
from pipeline import machine, precision  # noqa: E402
from pipeline.json_files import write_json  # noqa: E402


def autocast(hidden: torch.Tensor):
    """bf16 autocast exactly when the hidden states arrive in bf16, as they do under the loop's autocast."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=hidden.dtype == torch.bfloat16)


def head_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    with autocast(hidden):
        return hidden @ weight.t()


def full_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What transformers does: every logit at once, upcast to fp32 for the softmax."""
    return F.cross_entropy(head_logits(hidden, weight).float(), targets)


def _chunk_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head_logits(hidden, weight).float(), targets, reduction="sum")


def chunked_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """The same mean NLL, `chunk` tokens at a time; each chunk's logits are recomputed in backward."""
    total = sum(checkpoint(_chunk_nll, hidden[s:s + chunk], weight, targets[s:s + chunk], use_reentrant=False)
                for s in range(0, len(targets), chunk))
    return total / len(targets)


class GradientInForward(torch.autograd.Function):
    """Mean NLL of the head's logits; both gradients are computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight)
        total = torch.zeros((), dtype=torch.float32)
        for s in range(0, len(targets), chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            logits = head_logits(h, weight).float()
            lse = torch.logsumexp(logits, dim=-1)
            rows = torch.arange(len(t))
            total += (lse - logits[rows, t]).sum()
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[rows, t] -= 1  # d NLL / d logits, summed over the chunk
            with autocast(hidden):
                grad_hidden[s:s + chunk] = grad @ weight
                grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden / len(targets), grad_weight / len(targets))
        return total / len(targets)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


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
    ap.add_argument("--chunk", type=int, default=2048, help="tokens a chunk, recomputed")
    ap.add_argument("--in-forward-chunk", type=int, default=512, help="tokens a chunk, gradient in forward: "
                    "small enough that a chunk's logits stay in cache (512 × 8,192 fp32: 16 MiB)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "no"],
                    help="as a recipe's mixed_precision: auto is bf16 autocast where this CPU has native bf16")
    ap.add_argument("--out", default="reports/bench/lm_head_loss.json")
    a = ap.parse_args()

    mode = precision.resolve(a.precision, torch.device("cpu"))
    print(f"precision: {mode.reason}")
    g = torch.Generator().manual_seed(0)
    # The hidden states arrive in bf16 under autocast, in fp32 without (and their dtype turns the head's autocast
    # on or off); the head's weights are fp32 masters.
    hidden = torch.randn(a.tokens, a.hidden, generator=g).to(torch.bfloat16 if mode.mode == "bf16" else torch.float32)
    hidden.requires_grad_()
    weight = (0.02 * torch.randn(a.vocab, a.hidden, generator=g)).requires_grad_()
    targets = torch.randint(0, a.vocab, (a.tokens,), generator=g)

    def chunked(h, w, t):
        return chunked_loss(h, w, t, a.chunk)

    def in_forward(h, w, t):
        return GradientInForward.apply(h, w, t, a.in_forward_chunk)

    rows = []
    for name, fn in (("full, eager", full_loss), ("full, compiled", torch.compile(full_loss)),
                     (f"recomputed {a.chunk}, eager", chunked), (f"recomputed {a.chunk}, compiled", torch.compile(chunked)),
                     (f"gradient in forward {a.in_forward_chunk}, eager", in_forward)):
        seconds, peak, loss = measure(fn, hidden, weight, targets, a.repeats)
        rows.append({"loss": name, "seconds": seconds, "peak_bytes": peak, "value": loss})
        print(f"{name:>34}: {seconds * 1e3:7.0f} ms  {peak / 2**20:7.0f} MiB  (loss {loss:.4f})")
    values = [r["value"] for r in rows]
    assert max(values) - min(values) < 1e-3, f"the losses disagree: {values}"  # same function, five ways

    out = Path(a.out)
    write_json(out, {"args": vars(a), "precision": mode.record(), "machine": machine.describe(),
                     "torch": torch.__version__, "rows": rows})
    print(f"→ {out}")


if __name__ == "__main__":
    main()
