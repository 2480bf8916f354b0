"""A recipe's `dataset` may be the user's own files: a folder or one file of text, JSON Lines, CSV or Parquet.

Pretraining reads a folder of .txt files, one document per file (a lone .txt file, one a paragraph);
fine-tuning (the `classify` task) reads CSV files with class names for labels. The files are real rows
of the mirrored datasets, written out as a user would have them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import FINETUNE_TINY, TINY, bad_input_line, read_metrics
from pipeline import streaming
from pipeline.cli import main
from pipeline.config import CorpusSource, FinetuneConfig
from pipeline.data import load_splits
from pipeline.errors import PipelineError
from pipeline.tasks import get_task

MIRROR = Path(os.environ["PIPELINE_DATA_DIR"])
ARTICLES = 24


@pytest.fixture(scope="module")
def articles(tmp_path_factory) -> Path:
    """A folder of Wikipedia articles as .txt files (and a README that is not data)."""
    folder = tmp_path_factory.mktemp("own") / "articles"
    folder.mkdir()
    wiki = datasets.load_dataset(str(MIRROR / "local/enwiki_featured_good_2019"), split="validation")
    for i in range(ARTICLES):
        (folder / f"article-{i:02d}.txt").write_text(wiki[i]["text"])
    (folder / "README.md").write_text("My corpus: featured articles.\n")
    return folder


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """SST-2 rows as train.csv and validation.csv, columns `review` and `sentiment` ('negative', 'positive')."""
    folder = tmp_path_factory.mktemp("own") / "reviews"
    folder.mkdir()
    sst2 = datasets.load_dataset(str(MIRROR / "stanfordnlp/sst2"))
    for split, n in (("train", 256), ("validation", 64)):
        rows = sst2[split].select(range(n))
        names = rows.features["label"].names
        rows = rows.map(lambda r: {"review": r["sentence"], "sentiment": names[r["label"]]})
        rows.select_columns(["review", "sentiment"]).to_csv(str(folder / f"{split}.csv"), index=False)
    return folder


def test_a_folder_of_text_files_is_one_document_a_file(articles):
    splits = load_splits(str(articles))
    assert list(splits) == ["train"] and splits["train"].num_rows == ARTICLES  # the README is left out
    texts = {(articles / f"article-{i:02d}.txt").read_text() for i in range(ARTICLES)}
    assert set(splits["train"]["text"]) == texts  # whole files, their blank lines kept
    # Streamed, the same documents in the same order.
    stream = streaming.open_stream(CorpusSource(str(articles), eval_split=None), "train")
    assert [row["text"] for row in stream] == splits["train"]["text"]


def test_one_text_file_alone_is_one_document_a_paragraph(articles):
    content = "\n\n".join((articles / f"article-{i:02d}.txt").read_text() for i in range(3))
    single = articles.parent / "input.txt"
    single.write_text(content)
    rows = load_splits(str(single))["train"]["text"]
    first = [(articles / f"article-{i:02d}.txt").read_text().split("\n\n")[0] for i in range(3)]
    assert all(paragraph in rows for paragraph in first) and len(rows) > 3
    assert all(row in content and "\n\n" not in row for row in rows)


def test_pretraining_on_own_text_files_learns_and_rebuilds_its_cache_when_a_file_changes(articles, tmp_path, capsys):
    args = ["pretrain", "--recipe", str(TINY), f"dataset={articles}", "eval_split=null", "holdout_documents=4",
            "max_documents=null", "max_steps=30"]
    main([*args, "--out", str(tmp_path / "first")])
    first = capsys.readouterr().out
    assert "corpus: read 20 train / 4 validation documents" in first
    corpus = json.loads((tmp_path / "first" / "corpus.json").read_text())
    assert corpus["train"]["sources"][0]["dataset"] == str(articles) and corpus["train"]["documents"] == 20
    train = read_metrics(tmp_path / "first", "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    AutoModelForCausalLM.from_pretrained(tmp_path / "first" / "final")

    main([*args, "--out", str(tmp_path / "again"), "max_steps=1"])
    assert "corpus: using cache" in capsys.readouterr().out  # the same files: the same cache
    edited = articles / "article-00.txt"
    stat = edited.stat()
    try:
        edited.write_text(edited.read_text() + "\nAn edit.")
        main([*args, "--out", str(tmp_path / "edited"), "max_steps=1"])
        assert "corpus: using cache" not in capsys.readouterr().out  # an edited file: a new corpus
    finally:
        edited.write_text(edited.read_text().removesuffix("\nAn edit."))
        os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_fine_tuning_on_own_csv_names_the_classes_and_evaluates_alike(reviews, tiny_pretrain, tmp_path, capsys):
    out = tmp_path / "runs" / "finetune" / "classify"
    main(["finetune", "--task", "classify", "--ckpt", str(tiny_pretrain / "final"), "--recipe", str(FINETUNE_TINY),
          "--out", str(out), f"dataset={reviews}", "eval_split=validation", "text_column=review",
          "label_column=sentiment", "max_steps=20"])
    assert "256 train examples (train), 64 eval examples (validation)" in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert model.config.id2label == {0: "negative", 1: "positive"}  # the names in the files, sorted
    record = json.loads((out / "eval.json").read_text())
    assert record["evaluation"]["examples"] == 64

    # `evaluate --ckpt` reads the same files again, numbers the classes alike and scores the same.
    main(["evaluate", "--ckpt", str(out / "final")])
    assert f"{out}: accuracy" in capsys.readouterr().out
    again = json.loads((out / "eval.json").read_text())
    assert again["evaluation"]["metrics"]["accuracy"] == pytest.approx(record["evaluation"]["metrics"]["accuracy"])

    # The scoreboard shows the run in a section of its own, outside the benchmark's mean gain.
    main(["evaluate", "--runs", str(tmp_path / "runs"), "--report", str(tmp_path / "reports")])
    board = (tmp_path / "reports" / "scoreboard.md").read_text()
    own = board[board.index("### Your own data"):]
    accuracy = again["evaluation"]["metrics"]["accuracy"] * 100
    assert f"| classify | pretrained | {accuracy:.1f} |" in own and "Mean gain" not in board


def test_integer_labels_keep_their_numbers(tmp_path):
    folder = tmp_path / "topics"
    folder.mkdir()
    ag = datasets.load_dataset(str(MIRROR / "fancyzhx/ag_news"), split="test").select(range(40))
    for split in ("train", "test"):
        with open(folder / f"{split}.jsonl", "w") as f:
            for row in ag:
                f.write(json.dumps({"text": row["text"], "label": int(row["label"])}) + "\n")
    task = get_task("ag_news")
    _, _, rows = task.load(FinetuneConfig(dataset=str(folder)), "train")
    assert rows.features["label"].names == ["0", "1", "2", "3"]
    assert rows["label"] == [int(x) for x in ag["label"]]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ["missing path", "mixed types", "unknown type", "float labels", "no such column",
                                  "labels for QA", "classify without files"])
def test_bad_own_data_is_one_line_and_exit_2(case, reviews, tiny_pretrain, tmp_path, capsys):
    task, extra = {"labels for QA": ("squad", ["label_column=answer"]), "classify without files": ("classify", [])
                   }.get(case, ("sst2", []))
    extra += ["label_column=verdict"] if case == "no such column" else []
    dataset, expected = {
        "missing path": (tmp_path / "nowhere", "no such file or folder"),
        "mixed types": (_write(tmp_path / "mixed" / "a.csv", "text,label\nx,1\n").parent, "mixes file types (.csv, .jsonl)"),
        "unknown type": (_write(tmp_path / "notes.docx", "x"), "is a .docx file"),
        "float labels": (_write(tmp_path / "scores.csv", "sentence,label\ngood,0.5\nbad,1.5\n"), "holds float values"),
        "no such column": (reviews, "has no column 'verdict' (columns: review, sentiment)"),
        "labels for QA": (MIRROR / "local/squad_v1.1_dev_split", "label_column is for classification tasks; squad"),
        "classify without files": ("", "task classify reads your own files: name them with dataset=path/to/folder"),
    }[case]
    if case == "mixed types":
        _write(dataset / "b.jsonl", '{"text": "y", "label": 0}\n')
    argv = ["finetune", "--task", task, "--ckpt", tiny_pretrain / "final", "--recipe", FINETUNE_TINY,
            "--out", tmp_path / "out", f"dataset={dataset}", "eval_split=train", *extra]
    assert expected in bad_input_line(argv, capsys)
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_hub_id_is_not_mistaken_for_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stanfordnlp/sst2 folder here: the mirror's copy is read
    assert load_splits("stanfordnlp/sst2")["validation"].num_rows == 872
    with pytest.raises(PipelineError, match="no such file or folder"):
        load_splits("./stanfordnlp/sst2")  # written as a path, it is one
