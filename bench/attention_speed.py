"""Attention speed: time and memory of each backend and variant against sequence length.

One forward+backward (with the LM loss) of a small decoder — 2 layers, hidden 256, 4 heads
of 64, vocab 512, fp32 on CPU and bf16 on CUDA — over `--tokens` tokens per call: batch =
tokens / seq_len, so the linear layers do the same work at every length and what grows is
attention. Backends: eager, sdpa, flex_attention (forward only on CPU: torch has no CPU backward
for it), flash_attention_2 (CUDA with flash-attn only), and the project's blocksparse_sdpa (SDPA
over only the keys each chunk of queries may see; run on the masked variants only, since
without a mask it is plain sdpa). Variants: MHA; GQA (2 KV heads); MQA (1);
window (a sliding window of `--window` tokens); packed (documents with restarting position_ids,
i.e. doc masking, on the same tokens as MHA, which is its dense baseline).

- time: median of `--repeats` calls, after one untimed call (compilation, allocation).
- memory: the peak extra memory of a timed call over what the process held just before it
  (model, inputs), the largest over the calls. CUDA: torch.cuda.max_memory_allocated −
  memory_allocated (live tensors). CPU: the process's peak resident set (VmHWM, reset via
  /proc/self/clear_refs) − its resident set, after malloc_trim: every byte torch touched, plus
  some allocator slack.
- a series stops before a length whose time or memory, extrapolated from the previous length by
  the growth of the attention matrix (batch·seq²), would pass `--max-seconds` / `--max-memory-gb`.

    make bench-attention                      # this, then bench/attention_quality.py (see --help)
    .venv/bin/python bench/attention_speed.py --max-seq 512 --repeats 1          # smoke test
    .venv/bin/python bench/attention_speed.py --backends sdpa --variants MHA packed

Writes the speed rows of reports/bench/attention.{md,json} (bench/attention_report.py keeps the
quality rows), attention_time.png and attention_memory.png.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from attention_report import MODEL, VOCAB, add_common_args, format_ratios, save  # noqa: E402 (puts the repo root on sys.path)
from pipeline.attention import BLOCKSPARSE_SDPA, check_backend  # noqa: E402
from pipeline.config import ModelConfig  # noqa: E402
from pipeline.corpus import document_positions  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.model import build_causal_lm, llama_config  # noqa: E402

BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2", BLOCKSPARSE_SDPA)
MASKED = ("window", "packed")  # the variants that give attention a mask (the others run plain causal)
EOS = 2
GIB = 2**30


class Vocab:
    """What llama_config reads from a tokenizer."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, EOS

    def __len__(self) -> int:
        return VOCAB


def variants(window: int) -> dict[str, tuple[dict, bool]]:
    """name → (model config overrides, documents packed with doc masking?)."""
    return {"MHA": ({}, False), "GQA": ({"num_kv_heads": 2}, False), "MQA": ({"num_kv_heads": 1}, False),
            "window": ({"sliding_window": window}, False), "packed": ({}, True)}


class PeakMemory:
    """Peak extra memory of the work inside `with`, over what the process held when it began."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the base is what is live
            Path("/proc/self/clear_refs").write_text("5")  # the peak resident set restarts from now
            self.base = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _proc_status("VmHWM") - self.base


def _proc_status(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


def make_batch(seq: int, batch: int, packed: bool, doc_len: int, device: torch.device) -> dict:
    """Random tokens; documents of exponentially distributed length (mean doc_len), each ending in EOS."""
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(EOS + 1, VOCAB, (batch, seq), generator=g)
    ends = torch.rand(batch, seq, generator=g) < 1 / doc_len
    ids[ends] = EOS
    inputs = {"input_ids": ids, "labels": ids}
    if packed:
        inputs["position_ids"] = document_positions(ids, EOS)
    return {k: v.to(device) for k, v in inputs.items()}


def measure(model, inputs: dict, backward: bool, repeats: int, device: torch.device) -> tuple[float, int]:
    """(median seconds, peak extra bytes) of one call."""
    def call():
        if backward:
            model(**inputs, use_cache=False).loss.backward()
        else:
            with torch.no_grad():
                model(**inputs, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)

    call()  # untimed: compilation, first allocations
    times, peaks = [], []
    for _ in range(repeats):
        with PeakMemory(device) as memory:  # its resetting and reading stay outside the timed part
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        peaks.append(memory.peak)
    return statistics.median(times), max(peaks)


def run_series(args, backend: str, variant: str, backward: bool, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """One backend × variant over increasing lengths, until the next would pass the time or memory limit."""
    overrides, packed = variants(args.window)[variant]
    torch._dynamo.reset()  # flex_attention compiles per mask and shape: keep each series under the recompile limit
    model = build_causal_lm(llama_config(ModelConfig(**MODEL, **overrides), Vocab(), args.max_seq, backend), seed=0)
    model.to(device=device, dtype=dtype).train()
    rows, last = [], None  # last: (attention work, seconds, bytes) at the previous length
    for seq in (2**k for k in range(8, 20)):
        if not args.min_seq <= seq <= args.max_seq:
            continue
        batch = max(1, args.tokens // seq)
        work = batch * seq * seq  # the size of the attention matrix
        row = {"backend": backend, "variant": variant, "seq_len": seq, "batch": batch,
               "mode": "fwd+bwd" if backward else "fwd"}
        if last is not None:
            grow = work / last[0]
            if last[1] * grow > args.max_seconds or last[2] * grow > args.max_memory_gb * GIB:
                rows.append({**row, "skipped": f"stopped: would take ~{last[1] * grow:.0f} s and "
                                               f"~{last[2] * grow / GIB:.1f} GiB, extrapolated from {seq // 2}"})
                print(f"{backend:>17} {variant:>7} {seq:>6}: {rows[-1]['skipped']}")
                break
        try:
            seconds, peak = measure(model, make_batch(seq, batch, packed, args.doc_len, device), backward, args.repeats, device)
        except Exception as e:  # e.g. torch.compile of flex_attention failing at one shape: record it, go on
            rows.append({**row, "skipped": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"})
            print(f"{backend:>17} {variant:>7} {seq:>6}: {rows[-1]['skipped']}")
            break
        rows.append({**row, "seconds": seconds, "tokens_per_s": batch * seq / seconds, "peak_bytes": peak})
        print(f"{backend:>17} {variant:>7} {seq:>6}: {seconds * 1e3:9.1f} ms {peak / 2**20:8.0f} MiB "
              f"({row['mode']}, batch {batch})")
        last = (work, seconds, peak)
    return rows


def run_speed(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for backend in args.backends:
        try:
            check_backend(backend, device, training=True)
            backward = True
        except PipelineError as e:
            if backend != "flex_attention":
                rows.append({"backend": backend, "skipped": str(e)})
                print(f"{backend}: skipped ({e})")
                continue
            backward = False  # flex on CPU: forward only, marked so in every row
        for variant in args.variants:
            if backend == BLOCKSPARSE_SDPA and variant not in MASKED:
                continue  # no mask: exactly sdpa
            rows += run_series(args, backend, variant, backward, device, dtype)
    return rows


def plot(rows: list[dict], key: str, label: str, path: Path, scale: float) -> None:
    """Two panels: every backend on MHA (dense), every variant on sdpa (and blocksparse_sdpa's)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    panels = (("backends (MHA, dense)", lambda r: r["variant"] == "MHA", "backend"),
              ("variants (sdpa)", lambda r: r["backend"] in ("sdpa", BLOCKSPARSE_SDPA), "variant"))
    for ax, (title, keep, name) in zip(axes, panels):
        series: dict[str, list] = {}
        for r in rows:
            if key in r and keep(r):
                tag = r[name] + (" (fwd only)" if r["mode"] == "fwd" else "") + \
                    (f" ({BLOCKSPARSE_SDPA})" if name == "variant" and r["backend"] == BLOCKSPARSE_SDPA else "")
                series.setdefault(tag, []).append((r["seq_len"], r[key] / scale))
        for tag, points in series.items():
            ax.plot(*zip(*points), marker="o", label=tag)
        ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", title=title)
        lengths = sorted({r["seq_len"] for r in rows if key in r})
        ax.set_xticks(lengths, labels=[str(s) for s in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-seq", type=int, default=256)
    ap.add_argument("--max-seq", type=int, default=32768 if cuda else 8192)
    ap.add_argument("--tokens", type=int, default=None, help="tokens per call (default: --max-seq)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop a series before a call this slow")
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="stop a series before a call this big (default: half the free memory)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--variants", nargs="+", default=list(variants(0)), choices=list(variants(0)))
    ap.add_argument("--window", type=int, default=512, help="sliding window of the window variant")
    ap.add_argument("--doc-len", type=int, default=512, help="mean document length of the packed variant")
    add_common_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.tokens = args.tokens or args.max_seq
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.max_memory_gb is None:
        free = torch.cuda.mem_get_info()[0] if cuda else psutil.virtual_memory().available
        args.max_memory_gb = free / 2 / GIB

    out = Path(args.out)
    speed = run_speed(args, device, dtype)
    report = save(out, {"speed": speed}, vars(args), device, dtype)
    if speed:
        plot(speed, "seconds", "time per call (s)", out / "attention_time.png", 1)
        plot(speed, "peak_bytes", "peak extra memory per call (MiB)", out / "attention_memory.png", 2**20)
    print(f"doc-masked / dense sdpa at 2048: {format_ratios(report['doc_mask_ratio_2048'])}; wrote {out}/attention.*")


if __name__ == "__main__":
    main()
