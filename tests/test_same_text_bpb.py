"""bench/same_text_bpb.py: checkpoints with different tokenizers scored on the same bytes of real validation text."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, TINY, run_cli

from pipeline.config import PretrainConfig
from pipeline.corpus import validation_documents
from pipeline.recipe import load_recipe


def test_two_tokenizers_are_scored_on_every_byte_of_the_same_text(tiny_pretrain, tmp_path):
    other = tmp_path / "vocab384"  # a second tokenizer: another vocabulary, so other tokens for the same text
    done = run_cli("pretrain", "--recipe", TINY, "--out", other, "max_steps=10", "vocab_size=384")
    assert done.returncode == 0, done.stderr[-3000:]
    report = tmp_path / "bpb"
    cmd = [sys.executable, "bench/same_text_bpb.py", str(tiny_pretrain / "final"), str(other / "final"),
           "--recipe", str(TINY), "--max-documents", "6", "--report", str(report)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    docs = validation_documents(load_recipe(PretrainConfig, TINY, []))[0]
    text_bytes = sum(len(t.encode("utf-8")) for t in docs.texts(list(range(6))))
    results = json.loads(report.with_suffix(".json").read_text())["results"]
    (a,), (b,) = (r["sources"] for r in results)
    assert a["bytes"] == b["bytes"] == text_bytes  # every byte, the tail block's included, and nothing else
    assert a["tokens"] != b["tokens"]  # two tokenizers did cut it differently
    # The 60-step model has learned more than the 10-step one, per byte of the same text.
    assert 0 < a["bits_per_byte"] < b["bits_per_byte"]
    own = json.loads((tiny_pretrain / "run.json").read_text())["eval"]["bits_per_byte"]
    assert abs(a["bits_per_byte"] - own) < 0.25 * own  # the run's own validation blocks come from the same split
    assert "| weighted |" in report.with_suffix(".md").read_text()
