"""The bad-input catalogue: every case exits 2 with one line that names the problem and the fix,
no traceback, and leaves every file already saved byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from conftest import FINETUNE_TINY, TINY, bad_input_line
from pipeline.tokenizer import train_tokenizer


class Payload:
    """Unpickling this would create a file: proof that a loader executed pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_pretrain, tiny_classifier) -> dict[str, Path]:
    """Broken data, recipes and checkpoints, built once."""
    root = tmp_path_factory.mktemp("bad")
    real = Path(os.environ["PIPELINE_DATA_DIR"])
    mirror = root / "mirror"
    for hub_id in ("stanfordnlp/sst2", "local/squad_v1.1_dev_split", "local/enwiki_featured_good_2019"):
        (mirror / hub_id).parent.mkdir(parents=True, exist_ok=True)
        (mirror / hub_id).symlink_to(real / hub_id)
    sentiment = datasets.Features({"sentence": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=["negative", "positive"])})
    for name, rows in {"empty_text": {"sentence": ["fine", " ", "bad"], "label": [1, 0, 0]},
                       "label_out_of_range": {"sentence": ["fine", "ok", "bad"], "label": [1, 0, 0]}}.items():
        (mirror / "bad" / name).mkdir(parents=True)
        ds = datasets.Dataset.from_dict(rows, features=sentiment)
        if name == "label_out_of_range":  # ClassLabel refuses 7 at construction; write the raw ints
            ds = ds.cast_column("label", datasets.Value("int64")).map(lambda r, i: {"label": 7 if i == 1 else r["label"]},
                                                                        with_indices=True)
            ds = ds.cast_column("label", datasets.ClassLabel(names=["negative", "positive"]))
        ds.to_parquet(str(mirror / "bad" / name / "train.parquet"))
        ds.to_parquet(str(mirror / "bad" / name / "validation.parquet"))
    squad = datasets.load_dataset(str(real / "local/squad_v1.1_dev_split"))
    (mirror / "bad" / "squad_moved_answer").mkdir(parents=True)
    moved = squad["train"].select(range(8)).map(
        lambda r: {"answers": {"text": r["answers"]["text"], "answer_start": [s + 3 for s in r["answers"]["answer_start"]]}})
    moved.to_parquet(str(mirror / "bad" / "squad_moved_answer" / "train.parquet"))
    squad["validation"].select(range(8)).to_parquet(str(mirror / "bad" / "squad_moved_answer" / "validation.parquet"))
    (mirror / "bad" / "empty_corpus").mkdir(parents=True)
    datasets.Dataset.from_dict({"text": ["", "  \n"]}).to_parquet(str(mirror / "bad" / "empty_corpus" / "train.parquet"))
    datasets.Dataset.from_dict({"text": ["", "  \n"]}).to_parquet(str(mirror / "bad" / "empty_corpus" / "validation.parquet"))
    (mirror / "bad" / "not_utf8").mkdir(parents=True)
    (mirror / "bad" / "not_utf8" / "train.txt").write_bytes(b"hello\n\xff\xfe not utf-8\n")

    final = tiny_pretrain / "final"
    pickled = root / "pickled"
    shutil.copytree(final, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    mismatched = root / "mismatched"
    shutil.copytree(final, mismatched)
    wiki = datasets.load_dataset(str(real / "local/enwiki_featured_good_2019"), split="validation")
    train_tokenizer(wiki.select(range(10))["text"], 1000).save_pretrained(mismatched)  # > the model's 512
    no_weights = root / "no_weights"
    shutil.copytree(final, no_weights)
    (no_weights / "model.safetensors").unlink()
    bad_recipes = root / "recipes"
    bad_recipes.mkdir()
    (bad_recipes / "malformed.yaml").write_text("max_steps: [1, 2\nseq_len: 8\n")
    (bad_recipes / "list.yaml").write_text("- max_steps: 3\n")
    (bad_recipes / "tag.yaml").write_text("max_steps: !!python/object/apply:os.getcwd []\n")
    (bad_recipes / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    tampered = root / "tampered_run"
    shutil.copytree(tiny_pretrain, tampered, ignore=shutil.ignore_patterns("final"))
    import torch

    newest = sorted((tampered / "checkpoints").iterdir())[-1]
    torch.save({"state": Payload(root / "pwned")}, newest / "optimizer.bin")
    return {"mirror": mirror, "final": final, "classifier": tiny_classifier / "final", "pickled": pickled,
            "mismatched": mismatched, "no_weights": no_weights, "recipes": bad_recipes, "tampered": tampered,
            "empty_dir": _mkdir(root / "empty_dir"), "root": root}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


P, F = ["pretrain", "--recipe", str(TINY)], ["finetune", "--recipe", str(FINETUNE_TINY)]
CASES = [
    # recipes and command line
    ("malformed yaml", ["pretrain", "--recipe", "{recipes}/malformed.yaml"], "not valid YAML at line"),
    ("recipe not a mapping", ["pretrain", "--recipe", "{recipes}/list.yaml"], "must be a mapping"),
    ("yaml python tag", ["pretrain", "--recipe", "{recipes}/tag.yaml"], "not valid YAML"),
    ("recipe not utf-8", ["pretrain", "--recipe", "{recipes}/latin1.yaml"], "not valid YAML"),
    ("missing recipe file", ["pretrain", "--recipe", "{root}/nope.yaml"], "recipe file not found"),
    ("unknown key", [*P, "max_stepss=3"], "unknown recipe key 'max_stepss'"),
    ("unknown nested key", [*P, "model.depth=3"], "unknown recipe key 'model.depth'"),
    ("wrong type", [*P, "seq_len=long"], "recipe key 'seq_len' has the wrong type"),
    ("invalid value", [*P, "mixed_precision=fp8"], "must be one of auto, no, bf16, fp16"),
    ("negative value", [*P, "warmup_steps=-5"], "must be >= 0"),
    ("override without =", [*P, "resume"], "is not key=value"),
    ("unknown flag", [*P, "--fast"], "unrecognized arguments"),
    ("unknown stage", ["train"], "invalid choice"),
    ("batch does not divide", [*P, "global_batch_size=12"], "not a multiple of micro_batch_size"),
    ("fp16 on cpu", [*P, "mixed_precision=fp16"], "fp16 needs a GPU"),
    ("flash on cpu", [*P, "attn_implementation=flash_attention_2"], "needs a CUDA GPU"),
    ("flex training on cpu", [*P, "attn_implementation=flex_attention"], "no backward pass on CPU"),
    # data
    ("missing dataset", [*P, "dataset=nobody/nothing"], "dataset nobody/nothing not found"),
    ("missing split", [*P, "eval_split=dev"], "has no split 'dev'"),
    ("missing text column", [*P, "text_column=body"], "has no column 'body'"),
    ("empty corpus", [*P, "dataset=bad/empty_corpus"], "has no non-empty text"),
    ("text not utf-8", [*P, "dataset=bad/not_utf8", "eval_split=null"], "cannot read the local copy of bad/not_utf8"),
    ("unknown task", [*F, "--task", "sst3", "--ckpt", "{final}"], "unknown task 'sst3'"),
    ("missing column", [*F, "--task", "trec", "--ckpt", "{final}", "dataset=stanfordnlp/sst2"], "has no column 'text'"),
    ("label out of range", [*F, "--task", "sst2", "--ckpt", "{final}", "dataset=bad/label_out_of_range"],
     "has label 7, outside 0..1"),
    ("unlabelled split", [*F, "--task", "sst2", "--ckpt", "{final}", "eval_split=test"], "has label -1"),
    ("empty strings", [*F, "--task", "sst2", "--ckpt", "{final}", "dataset=bad/empty_text"], "has an empty text"),
    ("answer not in context", [*F, "--task", "squad", "--ckpt", "{final}", "dataset=bad/squad_moved_answer",
                               "max_length=128", "doc_stride=32"], "is not in its context"),
    # checkpoints
    ("checkpoint missing", [*F, "--task", "sst2", "--ckpt", "{root}/nowhere"], "does not exist"),
    ("not a checkpoint", [*F, "--task", "sst2", "--ckpt", "{empty_dir}"], "is not a checkpoint"),
    ("no safetensors", [*F, "--task", "sst2", "--ckpt", "{no_weights}"], "has no safetensors weights"),
    ("pickle payload", [*F, "--task", "sst2", "--ckpt", "{pickled}"], "holds pickle files (pytorch_model.bin)"),
    ("wrong kind to fine-tune", [*F, "--task", "sst2", "--ckpt", "{classifier}"], "is a classifier checkpoint"),
    ("wrong kind to generate", ["generate", "--ckpt", "{classifier}", "--prompt", "x"], "not a causal LM"),
    ("wrong kind to predict", ["predict", "--task", "squad", "--ckpt", "{classifier}", "--question", "q",
                               "--context", "c"], "needs a qa model"),
    ("predict without text", ["predict", "--task", "sst2", "--ckpt", "{classifier}"], "pass TEXT="),
    ("vocabularies differ", [*F, "--task", "sst2", "--ckpt", "{mismatched}"], "do not belong together"),
    ("pickled training state", [*P, "max_steps=60", "resume=true"], "cannot be loaded safely"),
]


def _tree(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(bad, tmp_path, monkeypatch, capsys, name, argv, message):
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(bad["mirror"]))
    if name.endswith(" on cpu"):  # the CPU path, also on a machine with a GPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a.format(**bad) for a in argv]
    if name == "pickled training state":
        out = bad["tampered"]
    else:
        out = tmp_path / "out"
        out.mkdir()
        (out / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    if argv[0] in ("pretrain", "finetune"):
        argv += ["--out", str(out)]
    watched = [out] + [Path(a) for a in argv if Path(a).is_dir()]
    before = {str(w): _tree(w) for w in watched}

    line = bad_input_line(argv, capsys)

    assert message in line, line
    assert {str(w): _tree(w) for w in watched} == before
    assert not (bad["root"] / "pwned").exists()
