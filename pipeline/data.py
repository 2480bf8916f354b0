"""Find a dataset by its hub id: a local mirror first, then the hub.

`PIPELINE_DATA_DIR` may hold copies laid out as `<owner>/<name>/`, each loadable with
`datasets.load_dataset(folder)` and carrying the hub's columns. Stages and tests use this
one function, so switching between the mirror and the hub never changes their code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets

from pipeline.errors import PipelineError

DATA_DIR_ENV = "PIPELINE_DATA_DIR"


def local_copy(hub_id: str) -> Path | None:
    """The mirror folder for `hub_id`, if PIPELINE_DATA_DIR holds one."""
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        return None
    folder = Path(root) / hub_id
    return folder if folder.is_dir() else None


def load_split(hub_id: str, split: str, config: str | None = None) -> datasets.Dataset:
    """Load one split of a dataset, from the mirror when there is one, else from the hub."""
    splits = load_splits(hub_id, config)
    if split not in splits:
        raise PipelineError(
            f"dataset {hub_id} has no split '{split}' (it has: {', '.join(splits)}): "
            "choose one of those in the recipe"
        )
    return splits[split]


def load_splits(hub_id: str, config: str | None = None) -> datasets.DatasetDict:
    folder = local_copy(hub_id)
    # datasets logs a warning per missing cache file; keep the user's terminal for real news.
    datasets.logging.set_verbosity(logging.ERROR)
    if folder is not None:
        try:
            return datasets.load_dataset(str(folder))
        except Exception as e:  # datasets wraps decode and schema errors in its own types
            cause = e.__cause__ or e.__context__ or e
            reason = str(cause).splitlines()[0][:160] if str(cause) else type(cause).__name__
            raise PipelineError(f"cannot read the local copy of {hub_id} in {folder} ({type(cause).__name__}: "
                                f"{reason}): its files must be UTF-8 text, CSV, JSON or Parquet") from None
    where = os.environ.get(DATA_DIR_ENV)
    # With a mirror configured, an unreachable hub is the usual case, not a hiccup: huggingface_hub
    # would retry each request for ~25 s before failing. Ask once, and fail at once.
    reason = _hub_unreachable() if where else None
    if reason is None:
        try:
            return datasets.load_dataset(hub_id, config)
        except Exception as e:  # the hub raises many types: offline, not found, gated, bad config
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    mirror = f"{where}/{hub_id}/ does not exist" if where else f"{DATA_DIR_ENV} is not set"
    raise PipelineError(
        f"dataset {hub_id} not found: {mirror} and the hub failed ({reason[:160]}); "
        f"set {DATA_DIR_ENV} to a folder holding {hub_id}/ (make DATA_DIR=...) or give hub access"
    )


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (offline mode, or one request that got no answer); None if it answers."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if datasets.config.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE or HF_DATASETS_OFFLINE
        return "offline mode is on: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=10)  # any HTTP answer, even an error, means reachable
    except Exception as e:  # the transport's own types (refused, DNS, timeout, TLS)
        return f"{constants.ENDPOINT} unreachable: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
    return None


def require_columns(ds: datasets.Dataset, columns: list[str], hub_id: str, split: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise PipelineError(
            f"dataset {hub_id} split '{split}' has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(ds.column_names)}): set the right column in the recipe or task"
        )
