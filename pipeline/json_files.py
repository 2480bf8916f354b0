"""The project's JSON records (run.json, eval.json, a study's rows, a benchmark's report), read and written one way."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_json(path: Path) -> dict:
    """The record at `path`, or {} when it has not been written (a run still going, a baseline not fit)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, data, indent: int | None = 2) -> Path:
    """Write `data` as JSON, parents made; returns `path`.

    Written beside, then renamed into place: a killed process never leaves half a record, and
    readers that take a record's presence to mean "done" (a resumed study, `make evaluate`)
    never read a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, path)
    return path
