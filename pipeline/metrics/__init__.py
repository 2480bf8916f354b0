"""Metrics as local `evaluate` modules: `evaluate.load("accuracy")` would fetch from the Hub."""

from pathlib import Path

import evaluate

from pipeline.errors import PipelineError

METRICS_DIR = Path(__file__).parent
KNOWN = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def load_metric(name: str) -> evaluate.EvaluationModule:
    if name not in KNOWN:
        raise PipelineError(f"unknown metric {name!r}: use one of {', '.join(KNOWN)}")
    # keep_in_memory: evaluate would otherwise write predictions to Arrow files in its cache.
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
