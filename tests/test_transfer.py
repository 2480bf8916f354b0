"""The transfer levers of fine-tuning: discriminative learning rates, length-grouped batches, mean
pooling, early stopping on a dev split carved out of train, task-adaptive LM training without labels."""

from __future__ import annotations

import json
import os

import datasets
import pytest
import torch
import transformers
from safetensors.torch import load_file

from conftest import FINETUNE_TINY, bad_input_line, reset_accelerate
from pipeline.config import FinetuneConfig
from pipeline.recipe import load_recipe
from pipeline.early_stopping import split_dev
from pipeline.errors import PipelineError
from pipeline.heads import load_head
from pipeline.optim import build_optimizer
from pipeline.pooling import add_mean_pooling_layer
from pipeline.stages import finetune
from pipeline.tasks import TASKS
from pipeline.trainer import epoch_batches


SQUAD = f"{os.environ['PIPELINE_DATA_DIR']}/local/squad_v1.1_dev_split/train.parquet"


def recipe(*overrides: str) -> FinetuneConfig:
    return load_recipe(FinetuneConfig, FINETUNE_TINY, list(overrides))


def test_discriminative_learning_rates(tiny_pretrain):
    cfg = recipe("learning_rate=1e-4", "head_learning_rate=1e-3", "layer_lr_decay=0.5", "weight_decay=0.1")
    model, _ = load_head(tiny_pretrain / "final", TASKS["sst2"].head, "pretrained", 0, "sdpa", num_labels=2)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups if g["weight_decay"] > 0}
    n_layers = model.config.num_hidden_layers
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    assert groups["head"]["params"] == [model.score.weight]
    # Layer i sits at depth i + 1 and the final norm (no decayed weights) above the last layer.
    for i in range(n_layers):
        assert groups[f"depth-{i + 1}"]["lr"] == pytest.approx(1e-4 * 0.5 ** (n_layers - i))
    assert groups["depth-0"]["lr"] == pytest.approx(1e-4 * 0.5 ** (n_layers + 1))  # the embeddings
    everything = [p for g in build_optimizer(model, cfg).param_groups for p in g["params"]]
    assert len(everything) == len(list(model.parameters()))  # each parameter in exactly one group
    assert all(p.ndim < 2 for g in build_optimizer(model, cfg).param_groups if g["weight_decay"] == 0
               for p in g["params"])  # norms are never decayed


def test_length_grouped_batches_cover_each_example_once_with_less_padding():
    lengths = torch.randint(3, 200, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    grouped = [epoch_batches(1000, 8, 2, rank, seed=1, epoch=0, lengths=lengths) for rank in range(2)]
    plain = epoch_batches(1000, 8, 1, 0, seed=1, epoch=0)
    flat = [i for shard in grouped for batch in shard for i in batch]
    assert len(flat) == len(set(flat)) == 992  # no overlap between processes; the last partial group dropped
    assert len(grouped[0]) == len(grouped[1])  # every process takes the same number of steps

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped[0]) + padding(grouped[1]) < padding(plain) / 4
    assert grouped[0] != epoch_batches(1000, 8, 2, 0, seed=1, epoch=1, lengths=lengths)  # reshuffled per epoch


def test_mean_pooling_layer_gives_the_last_token_the_mean_of_the_text():
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=3, num_key_value_heads=1, pad_token_id=0, num_labels=2)
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(config).eval()
    add_mean_pooling_layer(model)
    assert model.config.num_hidden_layers == 3
    layer, seen = model.model.layers[2], {}
    layer.register_forward_hook(lambda m, args, kwargs, out: seen.update(x=kwargs.get("hidden_states", args[0] if args
                                                                                      else None), y=out), with_kwargs=True)
    ids = torch.randint(1, 100, (2, 7))
    ids[1, 5:] = 0  # right padding
    model(input_ids=ids, attention_mask=(ids != 0).long())
    x, y = seen["x"], seen["y"][0] if isinstance(seen["y"], tuple) else seen["y"]
    v = layer.self_attn.v_proj.weight
    for row, n in ((0, 7), (1, 5)):
        mean = layer.input_layernorm(x)[row, :n].mean(0)  # position 0 (BOS) in, unlike the probe's `mean`
        torch.testing.assert_close(y[row, n - 1], x[row, n - 1] + v.T @ v @ mean, atol=1e-5, rtol=1e-5)


def test_early_stopping_reads_only_the_dev_split(tiny_pretrain, tmp_path, monkeypatch):
    task = TASKS["sst2"]
    seen = []
    real = type(task).evaluate

    def spy(self, model, rows, features, *args, **kwargs):
        seen.append(sorted(rows["idx"]))
        return real(self, model, rows, features, *args, **kwargs)

    monkeypatch.setattr(type(task), "evaluate", spy)
    cfg = recipe("max_train_samples=200", "max_eval_samples=40", "dev_fraction=0.2", "early_stopping_patience=1",
                 "max_steps=30", "eval_steps=5", "learning_rate=1e-5", "head_learning_rate=1e-5")
    out = tmp_path / "run"
    report = finetune.run("sst2", cfg, tiny_pretrain / "final", out)
    _, _, train_rows = task.load(cfg, "train")
    _, _, eval_rows = task.load(cfg, "eval")
    train_ids, eval_ids = set(train_rows["idx"]), sorted(eval_rows["idx"])
    *during, last = seen
    assert during and all(len(ids) == 40 and set(ids) <= train_ids for ids in during)  # 20% of the 200
    assert last == eval_ids  # the eval split, once, after training
    dev_rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in dev_rows if r["split"] != "train"][-1] == "eval"
    assert report["dev_examples"] == 40 and report["train"]["examples"] == 160
    assert report["steps"] < 30 and report["best_step"] <= report["steps"]  # a tiny rate stalls: it stopped early
    dev_scores = {r["step"]: r["accuracy"] for r in dev_rows if r["split"] == "dev"}
    # eval.json names the kept weights' dev score: the best of the dev evaluations, at best_step
    assert report["best_dev"] == {"accuracy": dev_scores[report["best_step"]]} == {"accuracy": max(dev_scores.values())}
    best = load_file(out / "best" / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in final if k in best)  # the best weights are the ones kept


def test_squad_dev_split_holds_out_whole_articles():
    rows = datasets.load_dataset("parquet", data_files=SQUAD, split="train")
    assert TASKS["squad"].dev_group == "title"
    train, dev = split_dev(rows, 0.1, seed=1337, group="title")
    assert len(train) + len(dev) == len(rows) and len(dev) >= 0.1 * len(rows)
    assert not set(train["title"]) & set(dev["title"])  # no article on both sides
    assert sorted([*train["id"], *dev["id"]]) == sorted(rows["id"])
    # Seeded: the same seed holds out the same articles, another seed others.
    assert list(split_dev(rows, 0.1, seed=1337, group="title")[1]["id"]) == list(dev["id"])
    assert set(split_dev(rows, 0.1, seed=7, group="title")[1]["title"]) != set(dev["title"])
    with pytest.raises(PipelineError, match="no 'topic' column"):
        split_dev(rows, 0.1, seed=1337, group="topic")
    one_article = rows.filter(lambda r: r["title"] == rows[0]["title"])
    with pytest.raises(PipelineError, match="every 'title' group"):
        split_dev(one_article, 0.1, seed=1337, group="title")


def test_task_adaptive_lm_training_never_sees_labels(tiny_pretrain, tmp_path, monkeypatch):
    """Two runs whose labels differ adapt the body to bit-identical weights."""
    task = TASKS["sst2"]
    real_load = type(task).load
    cfg = recipe("max_train_samples=160", "adapt_steps=4", "adapt_seq_len=32", "max_steps=1")
    finetune.run("sst2", cfg, tiny_pretrain / "final", tmp_path / "a")

    def flipped(self, cfg, which):
        hub_id, split, rows = real_load(self, cfg, which)
        return hub_id, split, rows.map(lambda r: {"label": 1 - r["label"]})

    monkeypatch.setattr(type(task), "load", flipped)
    reset_accelerate()
    finetune.run("sst2", cfg, tiny_pretrain / "final", tmp_path / "b")
    a = load_file(tmp_path / "a" / "adapt" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "adapt" / "final" / "model.safetensors")
    original = load_file(tiny_pretrain / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], original[k]) for k in a)  # it did train
    assert not (tmp_path / "a" / "adapt" / "checkpoints").exists()  # only final/ is kept
    adapted = json.loads((tmp_path / "a" / "eval.json").read_text())["adapt"]  # recorded beside the head's figures
    assert adapted["steps"] == 4 and adapted["seq_len"] == 32 and adapted["train_seconds"] > 0
    assert adapted["held_out_loss"]["after"] < adapted["held_out_loss"]["before"]
    # The head started from the adapted body, not from the pretrained checkpoint.
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["checkpoint"] == str(tiny_pretrain / "final")


@pytest.mark.parametrize("override, message", [
    ("layer_lr_decay=0", "must be in (0, 1]"),
    ("head_learning_rate=-1", "must be > 0, or null"),
    ("pooling=max", "must be one of last, mean"),
    ("dev_fraction=1.0", "must be in [0, 1)"),
    ("early_stopping_patience=2", "needs a dev split to watch"),
    ("adapt_steps=-3", "must be >= 0"),
    ("truncation_side=middle", "must be one of right, left"),
])
def test_bad_transfer_keys_exit_2(tiny_pretrain, tmp_path, capsys, override, message, task="sst2"):
    line = bad_input_line(["finetune", "--task", task, "--recipe", FINETUNE_TINY, "--ckpt", tiny_pretrain / "final",
                           "--out", tmp_path / "run", override], capsys)
    assert message in line, line
    assert not (tmp_path / "run").exists()


def test_frozen_body_first_then_its_own_warmup(tiny_pretrain):
    """LP-FT: only the head moves for freeze_body_steps, then the body warms up instead of jumping."""
    from pipeline.optim import build_scheduler

    cfg = recipe("learning_rate=1e-3", "head_learning_rate=1e-2", "warmup_steps=4", "freeze_body_steps=10",
                 "lr_scheduler_type=constant_with_warmup")
    model, _ = load_head(tiny_pretrain / "final", TASKS["sst2"].head, "pretrained", 0, "sdpa", num_labels=2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, max_steps=40)
    rates = []
    for _ in range(20):
        rates.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    body = [r["depth-1"] for r in rates]
    assert body[:10] == [0.0] * 10 and body[10] == pytest.approx(1e-3 / 4) and body[13:] == [pytest.approx(1e-3)] * 7
    assert rates[4]["head"] == pytest.approx(1e-2) and all(r["head"] > 0 for r in rates[1:])


def test_mean_pooling_calibration_makes_the_mean_outweigh_a_large_residual():
    from pipeline.pooling import POOLED_TO_RESIDUAL

    config = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=3, num_key_value_heads=1, pad_token_id=0, num_labels=2)
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(400)  # a residual stream as large as a pretrained one's
    ids = torch.randint(1, 100, (8, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    add_mean_pooling_layer(model, calibration=batch)
    layer, seen = model.model.layers[2], {}
    layer.register_forward_hook(lambda m, args, kwargs, out: seen.update(x=kwargs.get("hidden_states", args[0] if args
                                                                                      else None), y=out), with_kwargs=True)
    model(**batch)
    x, y = seen["x"][:, -1], (seen["y"][0] if isinstance(seen["y"], tuple) else seen["y"])[:, -1]
    ratio = (y - x).pow(2).mean(-1).sqrt().mean() / x.pow(2).mean(-1).sqrt().mean()
    assert ratio.item() == pytest.approx(POOLED_TO_RESIDUAL, rel=1e-3)


def test_mean_pooling_on_qa_exits_2(tiny_pretrain, tmp_path, capsys):
    test_bad_transfer_keys_exit_2(tiny_pretrain, tmp_path, capsys, "pooling=mean", "is for classification heads",
                                  task="squad")



@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_side_keeps_bos_and_that_end_and_travels_with_the_tokenizer(tiny_pretrain, tmp_path, side):
    task = TASKS["imdb"]
    cfg = recipe("max_train_samples=16", "max_length=32", f"truncation_side={side}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_pretrain / "final")
    _, split, rows = task.load(cfg, "train")
    features, info = task.preprocess(rows, tokenizer, cfg, task.dataset, split, ["neg", "pos"], True)
    texts = list(rows["text"])
    full = tokenizer(texts)["input_ids"]
    long = [i for i, ids in enumerate(full) if len(ids) > 32]
    assert long and info["truncated"] == len(long)  # IMDB reviews run longer than 32 tokens
    for i in long:
        kept = features[i]["input_ids"]
        expected = full[i][:32] if side == "right" else [tokenizer.bos_token_id] + full[i][-31:]
        assert kept == expected
    # The saved tokenizer cuts a text the way training did, for plain transformers at inference.
    tokenizer.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (reloaded.truncation_side, reloaded.model_max_length) == (side, 32)
    assert reloaded(texts[long[0]], truncation=True)["input_ids"] == features[long[0]]["input_ids"]
