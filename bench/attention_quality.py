"""Attention quality: validation loss of equal-budget pretrains, one attention change each.

Equal-budget pretrains through the real stage (`python -m pipeline pretrain`): the
`--quality-recipe` with `--quality-steps` steps at `--quality-seq` tokens, MHA with 4 heads as
the baseline, then one change each. Doc masking is compared on short documents (AG News,
`--quality-short-docs`): Wikipedia articles are far longer than a block, so almost no block
would hold a boundary. With doc masking the validation loss is computed with it too, as the
model is used. Reports validation loss (nats/token) and training tokens/s.

    make bench-attention                 # bench/attention_speed.py, then this (see --help)
    .venv/bin/python bench/attention_quality.py --quality-steps 10 --quality-seeds 1   # smoke test

Writes the quality rows of reports/bench/attention.{md,json} (bench/attention_report.py keeps the
speed rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from attention_report import add_common_args, save  # puts the repo root on sys.path
from pipeline.json_files import read_json

ROOT = Path(__file__).resolve().parent.parent


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


def pretrain(args, overrides: list[str], seed: int) -> tuple[dict, dict]:
    """(run.json, corpus.json) of one pretraining run through the CLI, in a folder deleted afterwards."""
    budget = [f"max_steps={args.quality_steps}", f"seq_len={args.quality_seq}", "model.num_heads=4",
              "model.num_kv_heads=null", "attn_implementation=sdpa", f"eval_steps={args.quality_steps}",
              f"save_steps={args.quality_steps}", f"logging_steps={args.quality_steps}", "num_samples=0"]
    with tempfile.TemporaryDirectory(prefix="bench-attention-") as tmp:
        cmd = [sys.executable, "-m", "pipeline", "pretrain", "--recipe", args.quality_recipe, "--out", f"{tmp}/run",
               *budget, *args.quality_override, f"seed={seed}", *overrides]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        return read_json(Path(tmp, "run", "run.json")), read_json(Path(tmp, "run", "corpus.json"))


def run_quality(args) -> list[dict]:
    rows = []
    for name, overrides, baseline in quality_runs(args.quality_seq, args.quality_short_docs):
        runs = [pretrain(args, overrides, 1337 + i) for i in range(args.quality_seeds)]
        losses = [summary["eval"]["loss"] for summary, _ in runs]
        summary, corpus = runs[0]
        rows.append({"run": name, "baseline": baseline, "overrides": overrides, "parameters": summary["parameters"],
                     "val_loss": statistics.mean(losses), "losses": losses,
                     "val_loss_sd": statistics.stdev(losses) if len(losses) > 1 else None,
                     "tokens_per_s": statistics.mean(run["tokens_per_s"] for run, _ in runs),
                     "mean_document_tokens": corpus["train"]["tokens"] / corpus["train"]["documents"]})
        print(f"quality: {name}: validation loss {rows[-1]['val_loss']:.4f}, {rows[-1]['tokens_per_s']:,.0f} tokens/s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    add_common_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quality = run_quality(args)
    # The report's environment line names the speed half's dtype, as it did when one script ran both halves.
    cuda = torch.cuda.is_available()
    save(Path(args.out), {"quality": quality}, vars(args), torch.device("cuda" if cuda else "cpu"),
         torch.bfloat16 if cuda else torch.float32)
    print(f"wrote {args.out}/attention.*")


if __name__ == "__main__":
    main()
