"""Corpus build: tokenize+pack throughput against raw `tokenizers`, peak memory against corpus size,
cache bytes per token, and the time of a cached rerun until the first training batch is ready.

    make bench-corpus                       # the first 1,000 Wikipedia articles as the 1x corpus
    .venv/bin/python bench/corpus.py --docs 300

The corpus is a slice of the Wikipedia mirror (`--docs` articles), written as mirrors of its own under
a temporary PIPELINE_DATA_DIR: `local/wiki_x{k}` holds the slice repeated k times (k = 1, 2, 4) and
the mirror's validation split. The recipe is the cpu recipe's (vocabulary 8192, seq_len 512) on that
one dataset, with the tokenizer trained on 500 documents at every size (its memory is not the
corpus's). Every measurement runs in a fresh process (`--child`), so peak RSS is that build's own:
ru_maxrss of the building process, and separately of its largest tokenizer worker. Each dataset is
loaded once before it is measured, so the Arrow conversion `datasets` does on first load is not counted.

- tokenize+pack MB/s: the whole build but tokenizer training (the trained tokenizer is reused), i.e.
  reading documents, tokenizing, mixing, writing shards, over UTF-8 MB of text, at 1 and 2 processes;
- the anchor: `tokenizers` encode_batch_fast on the same texts, in 1 process and in 2 (each encoding half);
  the four throughput measures run interleaved, `--repeats` times each, and the best of each is kept;
- cached rerun: a fresh process from `import pipeline` to the first collated training batch.

Writes reports/bench/corpus.json and reports/bench/corpus.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1, 2, 4)
TARGETS = {"vs_raw": 0.8, "speedup_2": 1.7, "rss_4x_over_1x": 1.2, "bytes_per_token": 2.0, "rerun_s": 5.0}


# ---- children: one measurement each, in a fresh process ----------------------------------------
def overrides(k: int, *extra: str) -> list[str]:
    return [f"dataset=local/wiki_x{k}", "mixture=[]", "eval_split=validation", "max_documents=null",
            "tokenizer_documents=500", *extra]


def child_build(args: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from pipeline import corpus
    from pipeline.config import PretrainConfig
    from pipeline.recipe import load_recipe

    cfg = load_recipe(PretrainConfig, ROOT / "recipes/pretrain/cpu.yaml", overrides(args["k"], *args["extra"]))
    if args.get("tokenizer"):  # time tokenize+pack alone: the tokenizer trained before is reused
        corpus.train_tokenizer = lambda texts, vocab: AutoTokenizer.from_pretrained(args["tokenizer"])
    started = time.perf_counter()
    data = corpus.build(cfg, log=lambda *_: None)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "stats": {s: {k: v for k, v in data.stats[s].items() if k != "sources"}
                                          for s in ("train", "eval")},
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def child_load(args: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline.data import load_split

    return {"rows": len(load_split(f"local/wiki_x{args['k']}", "train"))}


_texts: list[str] = []  # the raw child's texts and tokenizer, inherited by its forked processes
_tokenizer_file = ""


def _encode_range(bounds: tuple[int, int]) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(_tokenizer_file)
    tok.encode_special_tokens = True
    n, batch, size = 0, [], 0
    for text in _texts[bounds[0]:bounds[1]]:
        batch.append(text)
        size += len(text)
        if size >= 1 << 20:
            n += sum(len(e.ids) for e in tok.encode_batch_fast(batch, add_special_tokens=False))
            batch, size = [], 0
    if batch:
        n += sum(len(e.ids) for e in tok.encode_batch_fast(batch, add_special_tokens=False))
    return n


def child_raw(args: dict) -> dict:
    """encode_batch_fast on the corpus's texts (train and validation), ~1 MB a call, in 1 or 2 processes."""
    global _tokenizer_file
    import datasets

    _tokenizer_file = args["tokenizer_file"]
    for split in ("train", "validation"):
        ds = datasets.load_dataset(str(Path(os.environ["PIPELINE_DATA_DIR"]) / "local/wiki_x1"), split=split)
        _texts.extend(t for t in ds["text"] if t and t.strip())
    n_bytes = sum(len(t.encode("utf-8")) for t in _texts)
    procs = args["processes"]
    cut = [len(_texts) * i // procs for i in range(procs + 1)]
    started = time.perf_counter()
    if procs == 1:
        tokens = _encode_range((0, len(_texts)))
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            tokens = sum(pool.map(_encode_range, list(zip(cut, cut[1:]))))
    return {"seconds": time.perf_counter() - started, "bytes": n_bytes, "tokens": tokens}


def child_rerun(args: dict) -> dict:
    started = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from pipeline import corpus
    from pipeline.config import PretrainConfig
    from pipeline.recipe import load_recipe
    from pipeline.lm import PackedCollator
    from pipeline.trainer import epoch_batches

    imported = time.perf_counter()
    cfg = load_recipe(PretrainConfig, ROOT / "recipes/pretrain/cpu.yaml", overrides(1))
    data = corpus.build(cfg, log=lambda *_: None)
    built = time.perf_counter()
    first = epoch_batches(len(data.train), cfg.micro_batch_size, 1, 0, cfg.seed, 0)[0]
    batch = PackedCollator(data.tokenizer.eos_token_id, cfg.doc_masking)([data.train[i] for i in first])
    done = time.perf_counter()
    return {"seconds": done - started, "import_seconds": imported - started, "build_to_batch_seconds": done - imported,
            "cached_build_seconds": built - imported,
            "batch_shape": list(batch["input_ids"].shape)}


CHILDREN = {"build": child_build, "load": child_load, "raw": child_raw, "rerun": child_rerun}


# ---- the parent ---------------------------------------------------------------------------------
def run_child(kind: str, env: dict, **args) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)], env=env,
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        sys.exit(f"bench child {kind} {args} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - started
    print(f"  {kind} {args}: {json.dumps(out)[:300]}", flush=True)
    return out


def write_mirrors(data_dir: Path, docs: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = Path(os.environ.get("PIPELINE_DATA_DIR", ROOT.parent / "shared/data")) / "local/enwiki_featured_good_2019"
    train = pq.read_table(source / "train.parquet", columns=["text"]).slice(0, docs)
    validation = pq.read_table(source / "validation.parquet", columns=["text"])
    for k in SIZES:
        folder = data_dir / f"local/wiki_x{k}"
        folder.mkdir(parents=True)
        pq.write_table(pa.concat_tables([train] * k), folder / "train.parquet")
        pq.write_table(validation, folder / "validation.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1000, help="Wikipedia articles in the 1x corpus")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each throughput measure (the best is kept)")
    ap.add_argument("--out", default="reports/bench/corpus")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(CHILDREN[a.child[0]](json.loads(a.child[1]))))
        return
    from pipeline.machine import describe  # not at the top: the children time `import pipeline` themselves

    tmp = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    env = {**os.environ, "PIPELINE_DATA_DIR": str(tmp / "data"), "HF_DATASETS_CACHE": str(tmp / "hf"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        write_mirrors(tmp / "data", a.docs)
        print("loading each mirror once (Arrow conversion, not measured)", flush=True)
        for k in SIZES:
            run_child("load", env, k=k)
        print("peak RSS of a full build at 1x, 2x, 4x (default tokenize_workers)", flush=True)
        builds = {k: run_child("build", {**env, "PIPELINE_CACHE_DIR": str(tmp / f"cache-x{k}")}, k=k, extra=[])
                  for k in SIZES}
        (folder,) = (tmp / "cache-x1").glob("corpus-*")
        print("tokenize+pack at 1 and 2 processes, and raw encode_batch_fast, interleaved", flush=True)
        packed, raw = {1: [], 2: []}, {1: [], 2: []}
        for rep in range(a.repeats):  # interleaved, best of each: the cores are shared, their load drifts
            for p in (1, 2):
                raw[p].append(run_child("raw", env, processes=p,
                                        tokenizer_file=str(folder / "tokenizer/tokenizer.json")))
                packed[p].append(run_child("build", {**env, "PIPELINE_CACHE_DIR": str(tmp / f"cache-p{p}-{rep}")},
                                           k=1, extra=[f"tokenize_workers={p}"], tokenizer=str(folder / "tokenizer")))
        packed = {p: min(runs, key=lambda r: r["seconds"]) for p, runs in packed.items()}
        raw = {p: min(runs, key=lambda r: r["seconds"]) for p, runs in raw.items()}
        print("cached rerun", flush=True)
        rerun = run_child("rerun", {**env, "PIPELINE_CACHE_DIR": str(tmp / "cache-x1")})
        shard_bytes = sum(p.stat().st_size for p in folder.glob("*.bin"))
        stats = builds[1]["stats"]
        block_tokens = sum(stats[s]["blocks"] for s in ("train", "eval")) * 512
        cache_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    text_mb = raw[1]["bytes"] / 1e6
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(), "cores": len(os.sched_getaffinity(0)), "docs_1x": a.docs,
        "text_mb_1x": text_mb, "tokens_1x": stats["train"]["tokens"] + stats["eval"]["tokens"],
        "tokenize_pack_mb_s": {p: text_mb / packed[p]["seconds"] for p in (1, 2)},
        "raw_encode_mb_s": {p: raw[p]["bytes"] / 1e6 / raw[p]["seconds"] for p in (1, 2)},
        "peak_rss_mb": {k: builds[k]["rss_mb"] for k in SIZES},
        "worker_peak_rss_mb": {k: builds[k]["worker_rss_mb"] for k in SIZES},
        "build_seconds": {k: builds[k]["seconds"] for k in SIZES},
        "shard_bytes_per_token": shard_bytes / block_tokens, "cache_bytes_per_token": cache_bytes / block_tokens,
        "rerun_seconds": rerun["seconds"], "rerun_import_seconds": rerun["import_seconds"],
        "rerun_build_to_batch_seconds": rerun["build_to_batch_seconds"],
        "rerun_cached_build_seconds": rerun["cached_build_seconds"], "repeats": a.repeats,
        "rerun_process_seconds": rerun["process_seconds"],
    }
    pack_1, pack_2 = result["tokenize_pack_mb_s"][1], result["tokenize_pack_mb_s"][2]
    result["checks"] = {
        "tokenize+pack / raw, 1 process": [pack_1 / result["raw_encode_mb_s"][1], f">= {TARGETS['vs_raw']}"],
        "tokenize+pack / raw, 2 processes": [pack_2 / result["raw_encode_mb_s"][2], f">= {TARGETS['vs_raw']}"],
        "tokenize+pack, 2 processes / 1": [pack_2 / pack_1, f">= {TARGETS['speedup_2']}"],
        "peak RSS 4x / 1x": [result["peak_rss_mb"][4] / result["peak_rss_mb"][1], f"<= {TARGETS['rss_4x_over_1x']}"],
        "shard bytes per token": [result["shard_bytes_per_token"], f"== {TARGETS['bytes_per_token']:g}"],
        "cached rerun to first batch, s": [result["rerun_seconds"], f"<= {TARGETS['rerun_s']:g}"],
    }
    for row in result["checks"].values():
        value, rule = row
        op, bound = rule.split()
        row.append({">=": value >= float(bound), "<=": value <= float(bound), "==": abs(value - float(bound)) < 1e-9}[op])
    out = ROOT / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    from pipeline.machine import label

    lines = [f"# Corpus build ({r['date']})", "",
             f"`make bench-corpus` on {r['cores']} cores of an {label(r['machine'])}, other work may share them (the raw rows show how much they gave). "
             f"1x corpus: the first {r['docs_1x']:,} Wikipedia articles and the 108 validation articles, "
             f"{r['text_mb_1x']:.1f} MB of text, {r['tokens_1x']:,} tokens (vocabulary 8192, seq_len 512; "
             "tokenizer trained on 500 documents at every size).", "",
             f"| measure (best of {r['repeats']}, interleaved) | 1 process | 2 processes |", "|---|---|---|",
             f"| tokenize+pack, MB of text/s | {r['tokenize_pack_mb_s'][1]:.2f} | {r['tokenize_pack_mb_s'][2]:.2f} |",
             f"| raw `tokenizers` encode_batch_fast, MB/s | {r['raw_encode_mb_s'][1]:.2f} | {r['raw_encode_mb_s'][2]:.2f} |",
             "", "| corpus | build s | peak RSS, building process (MB) | peak RSS, largest tokenizer worker (MB) |",
             "|---|---|---|---|"]
    lines += [f"| {k}x | {r['build_seconds'][k]:.1f} | {r['peak_rss_mb'][k]:.0f} | {r['worker_peak_rss_mb'][k]:.0f} |"
              for k in SIZES]
    lines += ["", f"Cache: {r['shard_bytes_per_token']:.3f} bytes per token in the block shards, "
              f"{r['cache_bytes_per_token']:.3f} with the tokenizer and stats. Cached rerun: {r['rerun_seconds']:.2f} s "
              f"from `import pipeline` to the first collated batch ({r['rerun_import_seconds']:.2f} s of it imports, "
              f"{r['rerun_cached_build_seconds']:.2f} s loading the cached corpus; "
              f"{r['rerun_process_seconds']:.2f} s for the whole process, interpreter start included).", "",
              "| check | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {value:.3f} | {rule} | {'yes' if met else 'no'} |"
              for name, (value, rule, met) in r["checks"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
