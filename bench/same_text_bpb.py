"""Bits per byte of pretrained checkpoints on the same validation text, source by source.

A run's own bits/byte (run.json, `make evaluate`) is scored on its corpus's first validation blocks,
and the token-share mixture fills those blocks by tokens: two runs with different tokenizers (a
vocab_size study) score different documents, in a different order, with different shares of each
source's bytes. This scores every checkpoint on the same bytes: each source's validation documents of
a recipe's mixture (its eval_split, or its held-out last rows), at most --max-documents of each, every
document as <bos> text <eos>, the source's stream cut into blocks of the run's seq_len that overlap by one
token, so that every byte is scored once.

    .venv/bin/python bench/same_text_bpb.py runs/pretrain/a/final runs/pretrain/b/final \
        --report reports/bench/same_text_bpb

Writes REPORT.{json,md}: per checkpoint, each source's bits/byte and their mean weighted by the
recipe's shares (the mixture's own weighting of the sources).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline import corpus, machine, mixture  # noqa: E402
from pipeline.checkpoint import load_causal_lm  # noqa: E402
from pipeline.config import PretrainConfig  # noqa: E402
from pipeline.json_files import write_json  # noqa: E402
from pipeline.lm import evaluate_lm  # noqa: E402
from pipeline.recipe import load_recipe, load_run_config  # noqa: E402


def score(final: Path, documents: list[corpus.Documents], max_documents: int) -> list[dict]:
    """Summed NLL, tokens and bytes of each source's documents under the checkpoint in `final`."""
    cfg = load_run_config(PretrainConfig, final.parent / "config.yaml")
    model, tokenizer = load_causal_lm(final)
    acc = Accelerator(mixed_precision="no")  # full precision, as `make evaluate` scores every run
    model = model.to(acc.device)
    rows = []
    for docs in documents:
        positions = np.arange(min(max_documents, len(docs.rows)))
        stream = corpus.token_stream({"text": docs.texts(positions)}, tokenizer).astype(np.int64)
        # Blocks overlap by one token, so that every token but the stream's first (<bos>, no bytes) is predicted
        # exactly once; the tail is one shorter block. Every byte of the text is scored.
        step = cfg.seq_len - 1
        starts = range(0, len(stream) - 1, step)
        full = [torch.from_numpy(stream[s:s + cfg.seq_len]) for s in starts if s + cfg.seq_len <= len(stream)]
        tail = [torch.from_numpy(stream[s:]) for s in starts if s + cfg.seq_len > len(stream)]
        nll = tokens = n_bytes = 0.0
        for blocks in (full, tail):
            if not blocks:
                continue
            m = evaluate_lm(model, blocks, acc, tokenizer, cfg.micro_batch_size, cfg.doc_masking)
            part_nll = m["loss"] * m["eval_tokens"]
            nll, tokens = nll + part_nll, tokens + m["eval_tokens"]
            n_bytes += part_nll / (np.log(2) * m["bits_per_byte"])
        rows.append({"source": docs.name, "documents": len(positions), "tokens": int(tokens), "bytes": round(n_bytes),
                     "bits_per_byte": nll / (np.log(2) * n_bytes)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="final/ folders of pretraining runs")
    ap.add_argument("--recipe", default="recipes/pretrain/cpu.yaml", help="whose mixture's validation text to score")
    ap.add_argument("--max-documents", type=int, default=500, help="per source")
    ap.add_argument("--report", type=Path, default=Path("reports/bench/same_text_bpb"))
    a = ap.parse_args()
    cfg = load_recipe(PretrainConfig, a.recipe, [])
    sources = cfg.sources()
    shares = mixture.shares(sources)
    documents = corpus.validation_documents(cfg)
    results = []
    for final in a.checkpoints:
        rows = score(final, documents, a.max_documents)
        mean = float(sum(s * r["bits_per_byte"] for s, r in zip(shares, rows)))
        results.append({"checkpoint": str(final), "sources": rows, "weighted_bits_per_byte": mean})
        print(f"{final}: " + ", ".join(f"{r['source']} {r['bits_per_byte']:.4f}" for r in rows) + f"; weighted {mean:.4f}")
    report = {"command": "python bench/same_text_bpb.py " + " ".join(sys.argv[1:]), "recipe": a.recipe,
              "shares": [float(s) for s in shares], "machine": machine.describe(), "results": results,
              "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    a.report.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.report.with_suffix(".json"), report)
    names = [r["source"] for r in results[0]["sources"]]
    lines = ["# Bits per byte on the same validation text", "",
             f"Command: `{report['command']}`. Machine: {machine.label(report['machine'])}. Every checkpoint scores the same "
             f"documents of `{a.recipe}`'s validation sources (at most {a.max_documents} each, all their bytes); the "
             "weighted column weighs the sources by the recipe's shares.", "",
             "| checkpoint | " + " | ".join(names) + " | weighted |", "|---|" + "---:|" * (len(names) + 1)]
    for r in results:
        lines.append(f"| {r['checkpoint']} | " + " | ".join(f"{s['bits_per_byte']:.4f}" for s in r["sources"])
                     + f" | **{r['weighted_bits_per_byte']:.4f}** |")
    lines += ["", "Scored: " + "; ".join(f"{s['source']}: {s['documents']} documents, {s['bytes']:,} bytes" for s in
                                   results[0]["sources"]) + " (the same for every checkpoint; their tokens are in the JSON)."]
    a.report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.report}.md")


if __name__ == "__main__":
    main()
