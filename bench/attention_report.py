"""The attention benchmark's one report, written by its two halves: bench/attention_speed.py and
bench/attention_quality.py.

reports/bench/attention.json holds both halves: `speed` (with `doc_mask_ratio_2048`), `quality`,
the `args` each half ran with and the `environment` of the last run. Each half replaces only its
own rows and args, so either can be rerun alone; attention.md is then rendered from the whole.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline.attention import BLOCKSPARSE_SDPA  # noqa: E402
from pipeline.json_files import read_json, write_json  # noqa: E402

# The speed half's model; the report describes it.
VOCAB = 512
MODEL = {"hidden_size": 256, "num_layers": 2, "num_heads": 4}


def add_common_args(ap) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads, quality runs included (default: torch's choice)")
    ap.add_argument("--out", default="reports/bench")


def save(out: Path, rows: dict, args: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Merge one half's `rows` ({"speed": ...} or {"quality": ...}) and `args` into the report; write it."""
    report = {"doc_mask_ratio_2048": {}, "speed": [], "quality": [], **read_json(out / "attention.json")}
    report.update(rows)
    report["doc_mask_ratio_2048"] = doc_mask_ratios(report["speed"])
    report["args"] = {**report.get("args", {}), **args}
    cuda = device.type == "cuda"
    report["environment"] = {
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
        "model": ", ".join(f"{k} {v}" for k, v in MODEL.items()) + ", head_dim 64",
        "memory": "torch.cuda.max_memory_allocated − memory_allocated" if cuda else
                  "peak resident set (VmHWM) − resident set before the call, after malloc_trim",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "attention.json", report)
    (out / "attention.md").write_text(markdown(report))
    return report


def doc_mask_ratios(rows: list[dict], seq: int = 2048) -> dict[str, float]:
    """backend → forward+backward time of doc-masked packed blocks over dense causal sdpa, at `seq` tokens."""
    def t(backend, variant):
        return next((r["seconds"] for r in rows if r.get("backend") == backend and r.get("variant") == variant
                     and r.get("seq_len") == seq and "seconds" in r), None)
    dense = t("sdpa", "MHA")
    return {b: t(b, "packed") / dense for b in ("sdpa", BLOCKSPARSE_SDPA) if dense and t(b, "packed")}


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
