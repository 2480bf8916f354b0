"""SQuAD label audit: do the start/end tokens the QA head trains on decode back to the answers?

Every training window of the split goes through `prepare_train_features` (the labels the head
trains on); each labelled window's start/end tokens are decoded back to text through the
window's own offsets and compared with the answer it trains on, after the official SQuAD
normalisation (lowercase, no punctuation, no articles, whitespace collapsed). An off-by-one or
a dropped leading space (byte-level BPE puts the space before a word into the word's token)
would cap F1 silently; an answer that starts or ends inside a word ("10." in "2010.") cannot
be labelled by any token and is counted apart.

Also reported, to choose max_length / doc_stride for this tokenizer: the length of question +
context in tokens (with the special tokens) per example, the answers' length in tokens against
max_answer_length, and windows / no-answer share / round trip for a few window settings.

    .venv/bin/python bench/qa_labels.py                                   # writes reports/bench/qa_labels.md
    .venv/bin/python bench/qa_labels.py --tokenizer runs/pretrain/cpu/final --max-length 384 --doc-stride 128

Tokenizer, unless --tokenizer: runs/pretrain/cpu/final; else the newest finished corpus cache
of the cpu recipe's vocabulary (data/cache/corpus-*/tokenizer, written at the start of
`make pretrain`); else a byte-level BPE trained here on the split's contexts (pipeline.tokenizer).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PIPELINE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from pipeline.config import PretrainConfig  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.corpus import cache_root  # noqa: E402
from pipeline.data import load_split  # noqa: E402
from pipeline.tasks.qa import audit_labels, training_answer  # noqa: E402
from pipeline.tokenizer import train_tokenizer  # noqa: E402

DATASET = "local/squad_v1.1_dev_split"
PRETRAINED = ROOT / "runs" / "pretrain" / "cpu" / "final"
CPU_RECIPE = ROOT / "recipes" / "pretrain" / "cpu.yaml"
CANDIDATES = [(256, 64), (256, 96), (384, 128), (512, 128), (512, 192)]


def pick_tokenizer(path: str | None, contexts: list[str]):
    """The tokenizer and a line saying which one it is."""
    if path:
        return AutoTokenizer.from_pretrained(path), f"`{path}` (--tokenizer)"
    if (PRETRAINED / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(PRETRAINED), f"`{PRETRAINED.relative_to(ROOT)}` (the cpu pretraining run)"
    vocab = load_recipe(PretrainConfig, CPU_RECIPE, []).vocab_size
    caches = sorted((p.parent for p in Path(cache_root()).glob("corpus-*/stats.json")
                     if (p.parent / "tokenizer" / "tokenizer.json").is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in caches:
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        if len(tokenizer) == vocab:
            where = folder / "tokenizer"
            where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
            return tokenizer, (f"`{where}` (the corpus cache of a pretraining run with the cpu recipe's "
                               f"vocabulary, {vocab}; runs/pretrain/cpu/final did not exist yet)")
    tokenizer = train_tokenizer(sorted(set(contexts)), vocab_size=vocab)
    return tokenizer, (f"byte-level BPE of {vocab} tokens trained here on the split's contexts "
                       "(no pretraining run or corpus cache was found)")


def percentiles(values) -> dict[str, int]:
    values = np.asarray(values)
    return {"p50": int(np.percentile(values, 50)), "p90": int(np.percentile(values, 90)),
            "p99": int(np.percentile(values, 99)), "max": int(values.max())}


def summarize(records: list[dict]) -> dict:
    labelled = [r for r in records if r["labelled"]]
    aligned = [r for r in labelled if r["aligned"]]
    return {
        "windows": len(records),
        "no_answer": len(records) - len(labelled),
        "labelled": len(labelled),
        "match": sum(r["match"] for r in labelled),
        "exact": sum(r["exact"] for r in labelled),
        "aligned": len(aligned),
        "aligned_match": sum(r["match"] for r in aligned),
        "examples": len({r["id"] for r in records}),
        "examples_labelled": len({r["id"] for r in labelled}),
    }


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.2f}%" if b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="a folder with a saved tokenizer (default: see the module docstring)")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--max-answer-length", type=int, default=30, help="the postprocessing limit, in tokens")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench" / "qa_labels.md"))
    args = parser.parse_args()

    t0 = time.time()
    rows = load_split(DATASET, args.split)
    examples = rows.to_dict()
    tokenizer, which = pick_tokenizer(args.tokenizer, examples["context"])

    records = audit_labels(examples, tokenizer, args.max_length, args.doc_stride)
    main_stats = summarize(records)
    # The same windows labelled with each example's first gold answer (the labels before the audit).
    first_only = {**examples, "answers": [{"text": a["text"][:1], "answer_start": a["answer_start"][:1]}
                                          for a in examples["answers"]]}
    first_stats = summarize(audit_labels(first_only, tokenizer, args.max_length, args.doc_stride))
    changed = sum(training_answer(a) != 0 for a in examples["answers"])

    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    questions = [q.lstrip() for q in examples["question"]]
    q_len = [len(x) for x in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    c_len = [len(x) for x in tokenizer(examples["context"], add_special_tokens=False)["input_ids"]]
    total = [n_special + q + c for q, c in zip(q_len, c_len)]
    answer_tokens = [r["tokens"] for r in records if r["labelled"]]
    candidates = []
    for max_length, stride in CANDIDATES:
        if (max_length, stride) == (args.max_length, args.doc_stride):
            candidates.append((max_length, stride, main_stats))
        else:
            candidates.append((max_length, stride, summarize(audit_labels(examples, tokenizer, max_length, stride))))

    s = main_stats
    mismatches = [r for r in records if r["labelled"] and not r["match"]]
    lines = [
        "# SQuAD label audit",
        "",
        f"`.venv/bin/python bench/qa_labels.py --max-length {args.max_length} --doc-stride {args.doc_stride}` on "
        f"{datetime.date.today().isoformat()}, {time.time() - t0:.0f} s.",
        "",
        f"- data: `{DATASET}` split `{args.split}`: {len(rows):,} questions, "
        f"{len(set(examples['context'])):,} contexts",
        f"- tokenizer: {which}; {len(tokenizer):,} tokens",
        f"- windows: max_length={args.max_length}, doc_stride={args.doc_stride} (`prepare_train_features`, "
        "the labels fine-tuning trains on)",
        "",
        "## Labels decoded back through the offsets",
        "",
        "| | count | share |",
        "|---|---:|---:|",
        f"| training windows | {s['windows']:,} | {s['windows'] / s['examples']:.3f} per question |",
        f"| windows labelled no-answer (BOS) | {s['no_answer']:,} | {pct(s['no_answer'], s['windows'])} of windows |",
        f"| windows holding the whole answer | {s['labelled']:,} | {pct(s['labelled'], s['windows'])} of windows |",
        f"| questions with no window holding the whole answer | {s['examples'] - s['examples_labelled']:,} | "
        f"{pct(s['examples'] - s['examples_labelled'], s['examples'])} of questions |",
        f"| **round trip, SQuAD-normalised** (decoded span = answer) | {s['match']:,} | "
        f"**{pct(s['match'], s['labelled'])}** of labelled windows |",
        f"| round trip, character for character (after strip) | {s['exact']:,} | {pct(s['exact'], s['labelled'])} |",
        f"| answers at word boundaries (recoverable by tokens) | {s['aligned']:,} | "
        f"{pct(s['aligned'], s['labelled'])} |",
        f"| round trip of those, SQuAD-normalised | {s['aligned_match']:,} | {pct(s['aligned_match'], s['aligned'])} |",
        "",
        "Which answer is trained on. The offline training data is SQuAD's dev set, with several answers per "
        "question; `training_answer` takes the text most annotators gave (ties: the first). "
        f"It differs from the first answer for {changed:,} questions ({pct(changed, len(rows))}). Labelled "
        "with the first answer instead, the same windows would round-trip "
        f"{first_stats['match']:,} of {first_stats['labelled']:,} "
        f"({pct(first_stats['match'], first_stats['labelled'])}); "
        "the first answer is sometimes a string search's first hit inside another number "
        "(\"5\" inside \"Super Bowl 50\" for \"How many solo tackles?\", where the others said \"five\").",
        "",
    ]
    forgiven = [r for r in records if r["labelled"] and r["match"] and not r["exact"]]
    if forgiven:
        lines += ["Round trips that differ character for character but not after normalisation "
                  f"({len(forgiven)}; byte-level BPE keeps a run of punctuation in one token), for example:", ""]
        lines += [f"- {r['answer']!r} → {r['decoded']!r}" for r in forgiven[:5]]
        lines.append("")
    if mismatches:
        lines += [f"Labelled windows that do not round-trip ({len(mismatches)}; answer → decoded labels):", ""]
        lines += [f"- `{r['id']}`: {r['answer']!r} → {r['decoded']!r}"
                  + ("" if r["aligned"] else " (the answer starts or ends inside a word)") for r in mismatches[:30]]
        lines.append("")
    p_total, p_q, p_c = percentiles(total), percentiles(q_len), percentiles(c_len)
    p_ans = percentiles(answer_tokens)
    over = sum(t > args.max_length for t in total)
    lines += [
        "## Lengths in tokens",
        "",
        "| per question | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|",
        f"| question + context + {n_special} special tokens | {p_total['p50']} | {p_total['p90']} | "
        f"{p_total['p99']} | {p_total['max']} |",
        f"| question | {p_q['p50']} | {p_q['p90']} | {p_q['p99']} | {p_q['max']} |",
        f"| context | {p_c['p50']} | {p_c['p90']} | {p_c['p99']} | {p_c['max']} |",
        f"| answer (labelled span) | {p_ans['p50']} | {p_ans['p90']} | {p_ans['p99']} | {p_ans['max']} |",
        "",
        f"{over:,} questions ({pct(over, len(total))}) need more than one window of {args.max_length} tokens. "
        f"{sum(t > args.max_answer_length for t in answer_tokens):,} labelled answers "
        f"({pct(sum(t > args.max_answer_length for t in answer_tokens), len(answer_tokens))}) are longer than "
        f"max_answer_length={args.max_answer_length} tokens, so postprocessing can never predict them whole.",
        "",
        "## Window settings",
        "",
        "| max_length | doc_stride | windows | per question | no-answer windows | round trip |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for max_length, stride, c in candidates:
        mark = " (this run)" if (max_length, stride) == (args.max_length, args.doc_stride) else ""
        lines.append(f"| {max_length}{mark} | {stride} | {c['windows']:,} | {c['windows'] / c['examples']:.3f} | "
                     f"{pct(c['no_answer'], c['windows'])} | {pct(c['match'], c['labelled'])} |")
    lines += [
        "",
        "A no-answer window still trains the head (to point at the BOS) and costs a forward pass; a window "
        "costs attention quadratic in its length.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
