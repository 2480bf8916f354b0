"""Find a dataset: the user's own files by path, else a hub id in the local mirror, else on the hub.

A recipe's `dataset` may be a path to a file or folder of the user's own data (FILE_BUILDERS says
which types; a folder's splits come from its file names, as `datasets` reads a folder).
`PIPELINE_DATA_DIR` may hold copies of hub datasets laid out as `<owner>/<name>/`, each loadable with
`datasets.load_dataset(folder)` and carrying the hub's columns. Stages and tests use this
one function, so switching between files, the mirror and the hub never changes their code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
from datasets.data_files import DataFilesDict, get_data_patterns

from pipeline.errors import PipelineError

DATA_DIR_ENV = "PIPELINE_DATA_DIR"
# The user's own files: the `datasets` builder each suffix names. In a folder, a .txt file is one document
# (as litgpt's TextFiles reads them), so articles or books stay whole for the <bos> doc <eos> packing; one
# .txt file alone (nanoGPT's input.txt) is one document per paragraph, the text between blank lines, so
# that it can be held out from and cut into documents of a sane size. One document per line: JSON Lines or CSV.
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def files_path(name: str) -> Path | None:
    """`name` as the user's own files: an existing file or folder (relative to the working directory).
    A name that looks like a path (it starts with /, ./, ../ or ~, or ends in a known suffix) but names
    nothing is an error, not a hub id."""
    path = Path(name).expanduser()
    if name and path.exists():  # "" would be the working directory
        return path.resolve()
    if name.startswith(("/", "./", "../", "~")) or path.suffix.lower() in FILE_BUILDERS:
        raise PipelineError(f"dataset {name}: no such file or folder (relative paths start at {Path.cwd()}): "
                            "fix the path, or name a hub id such as stanfordnlp/imdb")
    return None


def data_files(path: Path) -> tuple[str, dict[str, list[str]]]:
    """(builder, split -> files) of a file or folder of the user's own data. A folder's splits come from
    its file names as `datasets` reads them (train*, validation*/valid*/dev*, test*; every file is train
    when none is named so); files of other types in it (a README) are left out."""
    kinds = ", ".join(FILE_BUILDERS)
    if path.is_file():
        if path.suffix.lower() not in FILE_BUILDERS:
            raise PipelineError(f"dataset {path} is a {path.suffix or 'suffix-less'} file: give a file or folder "
                                f"of {kinds} files")
        splits = {"train": [str(path)]}
    else:
        found = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
        splits = {str(split): [f for f in files if Path(f).suffix.lower() in FILE_BUILDERS]
                  for split, files in found.items()}
        splits = {split: files for split, files in splits.items() if files}
        if not splits:
            raise PipelineError(f"dataset {path} holds no data files: give a file or folder of {kinds} files")
    suffixes = sorted({Path(f).suffix.lower() for files in splits.values() for f in files})
    builders = {FILE_BUILDERS[s] for s in suffixes}
    if len(builders) > 1:
        raise PipelineError(f"dataset {path} mixes file types ({', '.join(suffixes)}): keep one type in a dataset "
                            "folder, or name each file as its own dataset")
    return builders.pop(), splits


def files_fingerprint(name: str) -> list | None:
    """What a cache built from the user's own files must notice: each file's path, size and time of
    change (an edited file gives a new cache). None for a hub id, whose copies do not change in place."""
    path = files_path(name)
    if path is None:
        return None
    stats = {file: os.stat(file) for files in data_files(path)[1].values() for file in files}
    return [[file, stat.st_size, stat.st_mtime_ns] for file, stat in sorted(stats.items())]


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


def load_splits(hub_id: str, config: str | None = None, streaming: bool = False
                ) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Every split of a dataset: the user's files, the mirror's copy or the hub's (`streaming`: IterableDatasets)."""
    path = files_path(hub_id)
    folder = local_copy(hub_id) if path is None else None
    # datasets logs a warning per missing cache file; keep the user's terminal for real news.
    datasets.logging.set_verbosity(logging.ERROR)
    if path is not None or folder is not None:
        if path is not None:  # the user's files: which builder reads them, and their splits
            builder, files = data_files(path)
            text = {"sample_by": "document" if path.is_dir() else "paragraph"} if builder == "text" else {}
            args, kwargs = (builder,), {"data_files": files, **text}
        else:
            args, kwargs = (str(folder),), {}
        try:
            return datasets.load_dataset(*args, streaming=streaming, **kwargs)
        except Exception as e:  # datasets wraps decode and schema errors in its own types
            cause = e.__cause__ or e.__context__ or e
            reason = str(cause).splitlines()[0][:160] if str(cause) else type(cause).__name__
            where = f"the files of {path}" if path is not None else f"the local copy of {hub_id} in {folder}"
            raise PipelineError(f"cannot read {where} ({type(cause).__name__}: {reason}): its files must be "
                                "UTF-8 text, CSV, JSON or Parquet") from None
    where = os.environ.get(DATA_DIR_ENV)
    # With a mirror configured, an unreachable hub is the usual case, not a hiccup: huggingface_hub
    # would retry each request for ~25 s before failing. Ask once, and fail at once.
    reason = _hub_unreachable() if where else None
    if reason is None:
        try:
            return datasets.load_dataset(hub_id, config, streaming=streaming)
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
