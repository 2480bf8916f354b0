"""SQuAD decoding: the same fine-tuned weights, their spans read two ways.

Each run's model goes over its evaluation windows once, in fp32 as `make evaluate` runs it, and its
start/end logits are decoded:

- **token edges**: the span runs from its first token's start to its last token's end, as the
  project decoded it before whole-word spans (a word the tokenizer cut can end up half in it);
- **whole words** (the default): the span takes in the rest of any word it starts or ends inside;
- whole words with a shorter `max_answer_length`, for information only: the recipe keeps 30, since
  choosing it on the evaluation split would tune on the test data.

Every run shares the checkpoint's tokenizer, so its windows are the same; only the decoding differs.

    .venv/bin/python bench/qa_decoding.py                       # every runs/finetune/squad* run
    .venv/bin/python bench/qa_decoding.py runs/finetune/squad runs/finetune/squad-scratch

Writes reports/bench/qa_decoding.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PIPELINE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from accelerate import Accelerator  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline import machine  # noqa: E402
from pipeline.checkpoint import EVAL_FILE, FINAL, inspect_model_folder  # noqa: E402
from pipeline.json_files import read_json, write_json  # noqa: E402
from pipeline.stages.evaluate import load_task_run  # noqa: E402  (the checks and loading make evaluate does)

DECODINGS = {  # name: postprocess_predictions keywords in place of the run's (ExtractiveQA.score)
    "token edges": {"whole_words": False},
    "whole words": {"whole_words": True},
    "whole words, max_answer_length 20": {"whole_words": True, "max_answer_length": 20},
    "whole words, max_answer_length 15": {"whole_words": True, "max_answer_length": 15},
}


def score_run(run_dir: Path, accelerator: Accelerator) -> dict:
    folder = run_dir / FINAL
    run = load_task_run(folder, inspect_model_folder(folder), read_json(run_dir / EVAL_FILE))
    logits = run.task.span_logits(run.model.to(accelerator.device), run.features, accelerator, run.cfg, run.tokenizer)
    scores = {}
    for name, decoding in DECODINGS.items():
        metric, _ = run.task.score(run.rows, run.features, logits, run.cfg, **decoding)
        scores[name] = {"f1": metric["f1"], "exact_match": metric["exact_match"]}
    return {"run": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
            "init": run.cfg.init, "seed": run.cfg.seed, "examples": len(run.rows), "scores": scores}


def write_report(records: list[dict], path: Path) -> None:
    described = machine.describe()
    write_json(path.with_suffix(".json"), {"machine": described, "date": datetime.date.today().isoformat(),
                                           "runs": records})
    names = list(DECODINGS)
    lines = ["# SQuAD decoding: token edges against whole-word spans", "",
             f"Machine: {machine.label(described)}. Command: `.venv/bin/python bench/qa_decoding.py`. "
             "The same weights per row, scored in fp32 on the evaluation split; F1 / EM.", "",
             "| run | init | seed | " + " | ".join(names) + " | Δ F1 / EM (whole words − token edges) |",
             "|---|---|---:|" + "---:|" * len(names) + "---:|"]
    for r in records:
        s = r["scores"]
        cells = [f"{s[n]['f1']:.2f} / {s[n]['exact_match']:.2f}" for n in names]
        delta = (f"{s['whole words']['f1'] - s['token edges']['f1']:+.2f} / "
                 f"{s['whole words']['exact_match'] - s['token edges']['exact_match']:+.2f}")
        lines.append(f"| {r['run']} | {r['init']} | {r['seed']} | " + " | ".join(cells) + f" | {delta} |")
    gains = [r["scores"]["whole words"]["f1"] - r["scores"]["token edges"]["f1"] for r in records]
    lines += ["", f"Whole words against token edges: F1 {sum(gains) / len(gains):+.2f} on average over "
              f"{len(records)} runs (from {min(gains):+.2f} to {max(gains):+.2f})."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="SQuAD run folders (default: runs/finetune/squad*)")
    p.add_argument("--report", type=Path, default=ROOT / "reports" / "bench" / "qa_decoding")
    args = p.parse_args()
    runs = args.runs or sorted(p.parent for p in (ROOT / "runs" / "finetune").glob("squad*/final/config.json"))
    runs = [r.resolve() for r in runs]
    if not runs:
        sys.exit("no SQuAD runs: make finetune TASK=squad first (and ARGS=\"init=scratch\" for the control)")
    accelerator = Accelerator(mixed_precision="no")
    records = [score_run(r, accelerator) for r in tqdm(runs, desc="runs")]
    write_report(records, args.report)
    print(args.report.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
