"""Put larger slices of the pretraining corpora into the GPU bundle than gpu-kit's trimmed mirror holds.

The GPU machine has no network, and only 64 MiB of tree travels to it: wheels (~20 MiB), the
project, the task datasets. gpu-kit keeps 700 Wikipedia articles, 10 books and 4,000 reviews
(~7M tokens), which a GPU at a million tokens a second goes through in seconds. Text alone,
zstd level 19 in one row group, packs about 4 bytes of text into 1, so the room left holds
~25M tokens: the corpora's leading rows, each cut to a byte budget in proportion to its share in
recipes/pretrain/gpu-small.yaml (0.4 / 0.1 / 0.5 of the tokens: pipeline/mixture.py cuts the
others to the scarcest source), validation splits whole.

    bash ../shared/gpu-kit/prepare.sh && .venv/bin/python bench/gpu/carry_corpora.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

MIRROR = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
BUNDLE = Path(".gpu/data")
MB = 1 << 20
BUDGETS = {  # file -> compressed bytes at most (None: the whole split)
    "local/enwiki_featured_good_2019/train.parquet": 10 * MB,
    "local/enwiki_featured_good_2019/validation.parquet": None,
    "local/gutenberg_en_books/train.parquet": int(2.5 * MB),
    "local/gutenberg_en_books/validation.parquet": None,
    "stanfordnlp/imdb/data/unsupervised-00000-of-00001.parquet": 12 * MB,
}
TEXT_PER_COMPRESSED = 3.6  # bytes of text per compressed byte at zstd 19 (measured on Wikipedia: 4.0)


def write(table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd", compression_level=19, use_dictionary=False,
                   row_group_size=len(table) or 1)


for name, budget in BUDGETS.items():
    table = pq.read_table(MIRROR / name)
    table = table.select(["text"]).replace_schema_metadata(table.schema.metadata)  # keeps the features metadata
    if budget is not None:
        sizes = [len(t.encode()) for t in table["text"].to_pylist()]
        total, rows = 0, 0
        while rows < len(sizes) and total + sizes[rows] <= budget * TEXT_PER_COMPRESSED:
            total, rows = total + sizes[rows], rows + 1
        table = table.slice(0, rows)
    path = BUNDLE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write(table, path)
    print(f"{name}: {len(table):,} rows, {path.stat().st_size / MB:.1f} MiB")
