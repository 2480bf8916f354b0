"""The attention benchmark's two halves share one report: each replaces only its own rows and args."""

from __future__ import annotations

import json
import sys

import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import attention_report  # noqa: E402

COMMITTED = ROOT / "reports" / "bench" / "attention.json"


def test_the_committed_report_renders_as_committed():
    report = json.loads(COMMITTED.read_text())
    assert attention_report.markdown(report) == (COMMITTED.with_suffix(".md")).read_text()


def test_one_half_keeps_the_other_halfs_rows_and_args(tmp_path):
    (tmp_path / "attention.json").write_text(COMMITTED.read_text())
    committed = json.loads(COMMITTED.read_text())
    speed = [{"backend": "sdpa", "variant": v, "seq_len": 2048, "batch": 1, "mode": "fwd+bwd", "seconds": s,
              "tokens_per_s": 2048 / s, "peak_bytes": 2**20} for v, s in (("MHA", 0.5), ("packed", 0.6))]
    report = attention_report.save(tmp_path, {"speed": speed}, {"tokens": 2048, "repeats": 1}, torch.device("cpu"),
                                   torch.float32)
    assert report["quality"] == committed["quality"]
    assert report["args"]["quality_steps"] == committed["args"]["quality_steps"] and report["args"]["repeats"] == 1
    assert report["doc_mask_ratio_2048"] == {"sdpa": 0.6 / 0.5}
    written = (tmp_path / "attention.md").read_text()
    assert "sdpa 1.20×" in written and "## Quality at equal budget" in written
    assert json.loads((tmp_path / "attention.json").read_text()) == report
