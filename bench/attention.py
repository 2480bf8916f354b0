"""Attention: cost of each backend and variant against sequence length, and quality at equal budget.

Speed. One forward+backward (with the LM loss) of a small decoder — 2 layers, hidden 256, 4 heads
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

Quality. Equal-budget pretrains through the real stage (`python -m pipeline pretrain`): the
`--quality-recipe` with `--quality-steps` steps at `--quality-seq` tokens, MHA with 4 heads as
the baseline, then one change each. Doc masking is compared on short documents (AG News,
`--quality-short-docs`): Wikipedia articles are far longer than a block, so almost no block
would hold a boundary. With doc masking the validation loss is computed with it too, as the
model is used. Reports validation loss (nats/token) and training tokens/s.

    make bench-attention                                       # everything, defaults (see --help)
    .venv/bin/python bench/attention.py --max-seq 512 --quality-steps 10 --repeats 1   # smoke test
    .venv/bin/python bench/attention.py --skip-quality --backends sdpa --variants MHA packed
    .venv/bin/python bench/attention.py --skip-speed       # the quality half only; keeps the speed rows

Writes reports/bench/attention.{md,json}, attention_time.png, attention_memory.png.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repo root, for `pipeline`
from pipeline.attention import BLOCKSPARSE_SDPA, check_backend  # noqa: E402
from pipeline.config import ModelConfig  # noqa: E402
from pipeline.corpus import document_positions  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.model import build_causal_lm, llama_config  # noqa: E402

BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2", BLOCKSPARSE_SDPA)
MASKED = ("window", "packed")  # the variants that give attention a mask (the others run plain causal)
EOS, VOCAB = 2, 512
MODEL = {"hidden_size": 256, "num_layers": 2, "num_heads": 4}
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


# ---- measuring ------------------------------------------------------------------------------
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


def run_series(a, backend: str, variant: str, backward: bool, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """One backend × variant over increasing lengths, until the next would pass the time or memory limit."""
    overrides, packed = variants(a.window)[variant]
    torch._dynamo.reset()  # flex_attention compiles per mask and shape: keep each series under the recompile limit
    model = build_causal_lm(llama_config(ModelConfig(**MODEL, **overrides), Vocab(), a.max_seq, backend), seed=0)
    model.to(device=device, dtype=dtype).train()
    rows, last = [], None  # last: (attention work, seconds, bytes) at the previous length
    for seq in (2**k for k in range(8, 20)):
        if not a.min_seq <= seq <= a.max_seq:
            continue
        batch = max(1, a.tokens // seq)
        work = batch * seq * seq  # the size of the attention matrix
        row = {"backend": backend, "variant": variant, "seq_len": seq, "batch": batch,
               "mode": "fwd+bwd" if backward else "fwd"}
        if last is not None:
            grow = work / last[0]
            if last[1] * grow > a.max_seconds or last[2] * grow > a.max_memory_gb * GIB:
                rows.append({**row, "skipped": f"stopped: would take ~{last[1] * grow:.0f} s and "
                                               f"~{last[2] * grow / GIB:.1f} GiB, extrapolated from {seq // 2}"})
                print(f"{backend:>17} {variant:>7} {seq:>6}: {rows[-1]['skipped']}")
                break
        try:
            seconds, peak = measure(model, make_batch(seq, batch, packed, a.doc_len, device), backward, a.repeats, device)
        except Exception as e:  # e.g. torch.compile of flex_attention failing at one shape: record it, go on
            rows.append({**row, "skipped": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"})
            print(f"{backend:>17} {variant:>7} {seq:>6}: {rows[-1]['skipped']}")
            break
        rows.append({**row, "seconds": seconds, "tokens_per_s": batch * seq / seconds, "peak_bytes": peak})
        print(f"{backend:>17} {variant:>7} {seq:>6}: {seconds * 1e3:9.1f} ms {peak / 2**20:8.0f} MiB "
              f"({row['mode']}, batch {batch})")
        last = (work, seconds, peak)
    return rows


def run_speed(a, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for backend in a.backends:
        try:
            check_backend(backend, device, training=True)
            backward = True
        except PipelineError as e:
            if backend != "flex_attention":
                rows.append({"backend": backend, "skipped": str(e)})
                print(f"{backend}: skipped ({e})")
                continue
            backward = False  # flex on CPU: forward only, marked so in every row
        for variant in a.variants:
            if backend == BLOCKSPARSE_SDPA and variant not in MASKED:
                continue  # no mask: exactly sdpa
            rows += run_series(a, backend, variant, backward, device, dtype)
    return rows


# ---- quality --------------------------------------------------------------------------------
BASELINE = "baseline"  # MHA with 4 heads, 1/sqrt(head_dim), full causal attention, no doc masking
NO_DOC_MASK = "doc masking off"


def quality_runs(seq: int, short_docs: list[str]) -> list[tuple[str, list[str], str]]:
    """(name, recipe overrides, the run it is compared with).

    Doc masking only changes blocks that hold a document boundary, and the Wikipedia articles
    are far longer than a block: its pair runs on a corpus of short documents.
    """
    return [
        (BASELINE, [], BASELINE),
        ("unscaled dot product (scale 1)", ["model.attention_scale=1.0"], BASELINE),
        ("1 head at equal width", ["model.num_heads=1", "model.num_kv_heads=1"], BASELINE),
        ("GQA: 2 KV heads", ["model.num_kv_heads=2"], BASELINE),
        ("MQA: 1 KV head", ["model.num_kv_heads=1"], BASELINE),
        (f"sliding window {seq // 4}", [f"model.sliding_window={seq // 4}"], BASELINE),
        (NO_DOC_MASK, short_docs, NO_DOC_MASK),
        ("doc masking on", [*short_docs, "doc_masking=true"], NO_DOC_MASK),
    ]


def pretrain(a, overrides: list[str], seed: int) -> tuple[dict, dict]:
    """(run.json, corpus.json) of one pretraining run through the CLI, in a folder deleted afterwards."""
    budget = [f"max_steps={a.quality_steps}", f"seq_len={a.quality_seq}", "model.num_heads=4",
              "model.num_kv_heads=null", "attn_implementation=sdpa", f"eval_steps={a.quality_steps}",
              f"save_steps={a.quality_steps}", f"logging_steps={a.quality_steps}", "num_samples=0"]
    with tempfile.TemporaryDirectory(prefix="bench-attention-") as tmp:
        cmd = [sys.executable, "-m", "pipeline", "pretrain", "--recipe", a.quality_recipe, "--out", f"{tmp}/run",
               *budget, *a.quality_override, f"seed={seed}", *overrides]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {})}
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        return (json.loads(Path(tmp, "run", "run.json").read_text()),
                json.loads(Path(tmp, "run", "corpus.json").read_text()))


def run_quality(a) -> list[dict]:
    rows = []
    for name, overrides, baseline in quality_runs(a.quality_seq, a.quality_short_docs):
        runs = [pretrain(a, overrides, 1337 + i) for i in range(a.quality_seeds)]
        losses = [summary["eval"]["loss"] for summary, _ in runs]
        summary, corpus = runs[0]
        rows.append({"run": name, "baseline": baseline, "overrides": overrides, "parameters": summary["parameters"],
                     "val_loss": statistics.mean(losses), "losses": losses,
                     "val_loss_sd": statistics.stdev(losses) if len(losses) > 1 else None,
                     "tokens_per_s": statistics.mean(run["tokens_per_s"] for run, _ in runs),
                     "mean_document_tokens": corpus["train"]["tokens"] / corpus["train"]["documents"]})
        print(f"quality: {name}: validation loss {rows[-1]['val_loss']:.4f}, {rows[-1]['tokens_per_s']:,.0f} tokens/s")
    return rows


# ---- reporting ------------------------------------------------------------------------------
def doc_mask_ratios(rows: list[dict], seq: int = 2048) -> dict[str, float]:
    """backend → forward+backward time of doc-masked packed blocks over dense causal sdpa, at `seq` tokens."""
    def t(backend, variant):
        return next((r["seconds"] for r in rows if r.get("backend") == backend and r.get("variant") == variant
                     and r.get("seq_len") == seq and "seconds" in r), None)
    dense = t("sdpa", "MHA")
    return {b: t(b, "packed") / dense for b in ("sdpa", BLOCKSPARSE_SDPA) if dense and t(b, "packed")}


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


def markdown(report: dict) -> str:
    env, args = report["environment"], report["args"]
    lines = ["# Attention benchmark", "",
             f"{env['device']}, {env['threads']} threads, {env['dtype']}, torch {env['torch']}, "
             f"transformers {env['transformers']}; {env['timestamp']}.", ""]
    if report["speed"]:
        lines += speed_markdown(report["speed"], env, args, report["doc_mask_ratio_2048"])
    if report["quality"]:
        lines += quality_markdown(report["quality"], args)
    return "\n".join(lines)


def speed_markdown(speed: list[dict], env: dict, args: dict, ratios: dict[str, float]) -> list[str]:
    lengths = sorted({r["seq_len"] for r in speed if "seconds" in r})
    series = list(dict.fromkeys((r["backend"], r["variant"], r["mode"]) for r in speed if "variant" in r))
    lines = [f"Model: {env['model']}, vocab {VOCAB}. Each call: {args['tokens']} tokens (batch = tokens / seq_len), "
             "forward + backward with the LM loss unless marked fwd. Variants: MHA (4 KV heads), GQA (2), MQA (1), "
             f"window (sliding window of {args['window']} tokens), packed (documents of mean {args['doc_len']} "
             "tokens with restarting position_ids: doc masking; MHA on the same tokens is its dense baseline). "
             f"Time: median of {args['repeats']} calls after one untimed. Memory: {env['memory']}.", "",
             "**Doc-masked packed blocks vs dense causal sdpa, seq 2048, forward+backward: "
             f"{format_ratios(ratios)}** (target ≤ 1.2×).", ""]
    for title, key, unit, scale in (("Time per call", "seconds", "ms", 1e-3),
                                    ("Peak extra memory per call", "peak_bytes", "MiB", 2**20)):
        lines += [f"## {title} ({unit})", "", "| backend | variant | mode | " + " | ".join(map(str, lengths)) + " |",
                  "|---|---|---|" + "---:|" * len(lengths)]
        for backend, variant, mode in series:
            cells = {r["seq_len"]: (f"{r[key] / scale:,.0f}" if key in r else "stopped")
                     for r in speed if (r.get("backend"), r.get("variant"), r.get("mode")) == (backend, variant, mode)}
            lines.append(f"| {backend} | {variant} | {mode} | " + " | ".join(cells.get(s, "") for s in lengths) + " |")
        lines.append("")
    notes = [r for r in speed if "skipped" in r]
    if notes:
        lines += ["Not measured:", ""]
        lines += [f"- {' '.join(str(r[k]) for k in ('backend', 'variant', 'seq_len') if k in r)}: {r['skipped']}"
                  for r in notes] + [""]
    return lines


def format_ratios(ratios: dict[str, float]) -> str:
    return ", ".join(f"{backend} {r:.2f}×" for backend, r in ratios.items()) or "n/a (not measured)"


def quality_markdown(quality: list[dict], args: dict) -> list[str]:
    lines = ["## Quality at equal budget", "",
             f"`{args['quality_recipe']}` {' '.join(args['quality_override'])} with {args['quality_steps']} steps at "
             f"seq_len {args['quality_seq']}, {args['quality_seeds']} seed(s) each; validation loss in nats/token "
             "(lower is better); Δ against the run in the 'against' column. The baseline is MHA with 4 heads, "
             "1/sqrt(head_dim), full causal attention; every other run changes one thing. The doc masking pair "
             "reads short documents (its overrides): in the Wikipedia articles almost no block holds a document "
             "boundary.", "",
             "| run | overrides | parameters | mean document (tokens) | validation loss | against | Δ | tokens/s |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    loss = {r["run"]: r["val_loss"] for r in quality}
    for r in quality:
        sd = f" ± {r['val_loss_sd']:.3f}" if r["val_loss_sd"] is not None else ""
        lines.append(f"| {r['run']} | {' '.join(r['overrides']) or '—'} | {r['parameters']:,} | "
                     f"{r['mean_document_tokens']:,.0f} | {r['val_loss']:.4f}{sd} | {r['baseline']} | "
                     f"{r['val_loss'] - loss[r['baseline']]:+.4f} | {r['tokens_per_s']:,.0f} |")
    return lines + [""]


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
    ap.add_argument("--skip-speed", action="store_true", help="keep the speed rows of the existing report")
    ap.add_argument("--skip-quality", action="store_true", help="keep the quality rows of the existing report")
    ap.add_argument("--quality-recipe", default="recipes/pretrain/tiny.yaml")
    ap.add_argument("--quality-steps", type=int, default=1000, help="optimizer steps of every quality run")
    ap.add_argument("--quality-seq", type=int, default=128, help="seq_len of every quality run")
    ap.add_argument("--quality-seeds", type=int, default=3, help="runs per setting (mean ± sd when > 1)")
    ap.add_argument("--quality-override", nargs="*", metavar="KEY=VALUE",
                    default=["max_documents=400", "tokenizer_documents=200", "model.hidden_size=128",
                             "max_eval_samples=256"],
                    help="recipe overrides for every quality run (default: a 0.5M-parameter model, 400 articles, "
                         "256 validation blocks)")
    ap.add_argument("--quality-short-docs", nargs="*", metavar="KEY=VALUE",
                    default=["dataset=fancyzhx/ag_news", "eval_split=test", "max_documents=20000"],
                    help="recipe overrides giving the doc-masking pair a corpus of short documents")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads, quality runs included (default: torch's choice)")
    ap.add_argument("--out", default="reports/bench")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    a.tokens = a.tokens or a.max_seq
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if a.max_memory_gb is None:
        free = torch.cuda.mem_get_info()[0] if cuda else psutil.virtual_memory().available
        a.max_memory_gb = free / 2 / GIB

    out = Path(a.out)
    # A skipped half keeps what the last report measured, so either half can be rerun alone.
    previous = json.loads((out / "attention.json").read_text()) if (out / "attention.json").is_file() else {}
    speed = previous.get("speed", []) if a.skip_speed else run_speed(a, device, dtype)
    quality = previous.get("quality", []) if a.skip_quality else run_quality(a)
    if a.skip_speed and "args" in previous:  # the speed section describes the run that measured it
        a.tokens, a.window, a.doc_len, a.repeats = (previous["args"][k] for k in ("tokens", "window", "doc_len", "repeats"))
    report = {
        "doc_mask_ratio_2048": doc_mask_ratios(speed), "speed": speed, "quality": quality, "args": vars(a),
        "environment": {
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
            "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
            "model": ", ".join(f"{k} {v}" for k, v in MODEL.items()) + ", head_dim 64",
            "memory": "torch.cuda.max_memory_allocated − memory_allocated" if cuda else
                      "peak resident set (VmHWM) − resident set before the call, after malloc_trim",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "attention.md").write_text(markdown(report))
    if speed:
        plot(speed, "seconds", "time per call (s)", out / "attention_time.png", 1)
        plot(speed, "peak_bytes", "peak extra memory per call (MiB)", out / "attention_memory.png", 2**20)
    print(f"doc-masked / dense sdpa at 2048: {format_ratios(report['doc_mask_ratio_2048'])}; wrote {out}/attention.*")


if __name__ == "__main__":
    main()
