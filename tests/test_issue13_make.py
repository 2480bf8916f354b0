"""The make targets: which data folder they use, where reports go, what exit codes users see."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import ROOT, TINY
from pipeline.errors import PipelineError
from pipeline.trainer import NonFiniteLoss, TrainingInterrupted

SHOW = ["--eval", "show-data-dir: ; @echo $$PIPELINE_DATA_DIR", "show-data-dir"]


def _make(*args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    # As a user's shell would call make: under `make test`, MAKELEVEL and MAKEFLAGS would make this a
    # sub-make (its messages then say "make[2]:").
    base = {k: v for k, v in os.environ.items()
            if k not in ("PIPELINE_DATA_DIR", "DATA_DIR", "MFLAGS") and not k.startswith("MAKE")}
    return subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("env, args, expected", [
    ({}, [], str(ROOT.parent / "shared" / "data")),
    ({"PIPELINE_DATA_DIR": "/mirror/exported"}, [], "/mirror/exported"),
    ({"DATA_DIR": "/mirror/make-spelling"}, [], "/mirror/make-spelling"),
    ({"PIPELINE_DATA_DIR": "/mirror/exported", "DATA_DIR": "/mirror/make-spelling"}, [], "/mirror/exported"),
    ({"PIPELINE_DATA_DIR": "/mirror/exported"}, ["DATA_DIR=/mirror/command-line"], "/mirror/command-line"),
    ({}, ["DATA_DIR=relative"], str(ROOT / "relative")),
], ids=["default", "exported", "exported DATA_DIR", "both exported", "command line wins", "relative"])
def test_data_dir(env, args, expected):
    result = _make(*SHOW, *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("target, report", [("evaluate", "runs/reports"), ("all", "runs/reports"),
                                            ("report-results", "reports")])
def test_reports_location(target, report):
    """Only `make report-results` rewrites the committed reports/."""
    result = _make("-n", target)
    assert result.returncode == 0, result.stderr
    evaluations = [line for line in result.stdout.splitlines() if "-m pipeline evaluate" in line]
    assert evaluations and all(line.rstrip().endswith(f"--report {report}") for line in evaluations), evaluations


def test_readme_documents_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit codes"):]
    section = section[:section.index("\n## ")]
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.M)}
    assert documented == {0, 1, PipelineError.exit_code, NonFiniteLoss.exit_code, TrainingInterrupted.exit_code}


def test_make_shows_the_stage_exit_code(tmp_path):
    """make itself exits 2 on any failed recipe; its last line carries the stage's own code (README)."""
    result = _make("pretrain", f"RECIPE={TINY}", f"OUT={tmp_path / 'nan'}",
                   "ARGS=learning_rate=1e30 warmup_steps=0 max_steps=20 save_steps=100",
                   env={"PIPELINE_DATA_DIR": os.environ["PIPELINE_DATA_DIR"]}, timeout=600)
    assert result.returncode == 2
    assert re.search(r"make: \*\*\* \[Makefile:\d+: pretrain\] Error 3$", result.stderr.strip()), result.stderr[-2000:]


def test_make_with_no_target_lists_every_target_with_its_line():
    result = _make()
    assert result.returncode == 0, result.stderr
    listed = dict(line.split(None, 2)[1:] for line in result.stdout.splitlines())  # "make TARGET text"
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert sorted(listed) == sorted(phony)  # every target, each once, with its own line
    assert all(text.strip() for text in listed.values())


@pytest.mark.parametrize("target", ["finetune", "probe", "predict"])
def test_a_task_target_without_task_names_the_tasks(target):
    result = _make(target)
    assert result.returncode == 2
    first, last = result.stderr.strip().splitlines()
    assert first == ("error: no task given: pass --task (make TASK=...), one of sst2, rotten_tomatoes, imdb, ag_news, "
                     "trec, emotion, squad, classify")
    assert re.search(rf"make: \*\*\* \[Makefile:\d+: {target}\] Error 2$", last)
