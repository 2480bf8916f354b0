"""Every default fine-tuning recipe works from a user's own checkpoint of every family the README names.

The recipes' levers reach inside the body: `pooling: mean` adds a block (pipeline/pooling.py) and
`optimizer: muon` picks the blocks' weight matrices (pipeline/optim.py). Both find the blocks by
structure, so Llama, Mistral, Qwen2 and GPT-2 (`transformer.h.*`, Conv1D, fused q/k/v) all take them.
Each recipe runs a few steps on tiny models built from configs; the saved final/ must load back with
plain transformers, whole, holding the body that was trained from the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import BYO_FAMILIES, ROOT, save_byo
from pipeline.cli import main
from pipeline.config import FinetuneConfig
from pipeline.recipe import load_recipe
from pipeline.heads import load_head, transformer_blocks
from pipeline.optim import CombinedOptimizer, build_optimizer, parameter_depths
from pipeline.pooling import add_mean_pooling_layer
from pipeline.tasks import OWN_DATA_TASKS, TASKS, get_task

RECIPES = sorted(path.stem for path in (ROOT / "recipes" / "finetune").glob("*.yaml") if path.stem != "tiny")
FEW_STEPS = ["max_steps=2", "eval_steps=2", "save_steps=2", "logging_steps=1", "max_train_samples=64",
             "max_eval_samples=32", "mixed_precision=no"]
FALLBACK = re.compile(r"using (pooling=last|optimizer=adamw)")


def default_recipe(name: str, *overrides: str) -> FinetuneConfig:
    return load_recipe(FinetuneConfig, ROOT / "recipes" / "finetune" / f"{name}.yaml", list(overrides))


@pytest.fixture(scope="module")
def byo_checkpoint(byo_texts, tmp_path_factory):
    """family → a saved tiny checkpoint of it, built once per module (and xdist worker)."""
    folders = {}

    def get(family: str):
        if family not in folders:
            folders[family] = save_byo(tmp_path_factory.mktemp(family), family, byo_texts, pad=family != "gpt2")
        return folders[family]

    return get


@pytest.fixture(scope="module")
def own_files(tmp_path_factory) -> Path:
    """The own-data task's files: real SST-2 rows as train.csv and test.csv, labels by name."""
    folder = tmp_path_factory.mktemp("own")
    sst2 = datasets.load_dataset(str(Path(os.environ["PIPELINE_DATA_DIR"]) / "stanfordnlp/sst2"), split="train")
    names = sst2.features["label"].names
    for split, rows in (("train", range(128)), ("test", range(128, 192))):
        part = sst2.select(rows).map(lambda r: {"text": r["sentence"], "class": names[r["label"]]})
        part.select_columns(["text", "class"]).rename_column("class", "label").to_csv(str(folder / f"{split}.csv"), index=False)
    return folder


def test_every_recipe_is_covered():
    # One default recipe per task (the benchmark's and the own-data ones), each run below against every family.
    assert set(RECIPES) == set(TASKS) | set(OWN_DATA_TASKS)


def is_mean_block(block) -> bool:
    """Zero queries and keys: the block's attention is still an exact mean of the text."""
    if hasattr(block, "self_attn"):
        return not block.self_attn.q_proj.weight.any() and not block.self_attn.k_proj.weight.any()
    d = block.attn.c_attn.weight.shape[0]
    return not block.attn.c_attn.weight[:, :2 * d].any()


@pytest.mark.parametrize("family", BYO_FAMILIES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_default_recipe_fine_tunes_each_family(recipe, family, byo_checkpoint, own_files, tmp_path, capsys):
    ckpt, out, task, cfg = byo_checkpoint(family), tmp_path / recipe, get_task(recipe), default_recipe(recipe)
    files = [f"dataset={own_files}"] if recipe in OWN_DATA_TASKS else []
    main(["finetune", "--task", recipe, "--ckpt", str(ckpt), "--recipe", str(ROOT / "recipes" / "finetune" /
          f"{recipe}.yaml"), "--out", str(out), *FEW_STEPS, *files])  # exit 2 or a traceback fails the test here
    assert not FALLBACK.search(capsys.readouterr().out)  # every lever applied, none fell back
    assert task.headline in json.loads((out / "eval.json").read_text())["evaluation"]["metrics"]

    final = out / "final"
    model = task.head.from_pretrained(final)
    saved = load_file(final / "model.safetensors")
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()  # nothing missing, so nothing silently re-initialised
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # The body is the checkpoint's, trained a little (2 steps, early in the warmup), not a fresh one.
    start, body = AutoModelForCausalLM.from_pretrained(ckpt).base_model, model.base_model.state_dict()
    assert all(torch.allclose(body[k], v, atol=1e-3) for k, v in start.state_dict().items())
    assert any(not torch.equal(body[k], v) for k, v in start.state_dict().items())

    blocks = transformer_blocks(model.base_model)
    if cfg.pooling == "mean":  # one more block than the checkpoint, still a mean after training
        assert len(blocks) == model.config.num_hidden_layers == len(transformer_blocks(start)) + 1
        assert is_mean_block(blocks[-1])
    assert AutoTokenizer.from_pretrained(final).truncation_side == cfg.truncation_side  # imdb keeps the end


@pytest.mark.parametrize("family", BYO_FAMILIES)
def test_muon_takes_every_blocks_weight_matrices_in_each_family(family, byo_checkpoint):
    cfg = default_recipe("squad")
    assert cfg.optimizer == "muon"
    model, _ = load_head(byo_checkpoint(family), TASKS["squad"].head, "pretrained", 0, "sdpa")
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, CombinedOptimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in optimizer.optimizers[1].param_groups for p in g["params"]}
    block = r"\.h\." if family == "gpt2" else r"\.layers\."
    assert in_muon == {n for n, p in model.named_parameters() if p.ndim == 2 and re.search(block + r"\d+\.", n)}
    per_block = 4 if family == "gpt2" else 7  # c_attn, c_proj, c_fc, mlp.c_proj; q, k, v, o, gate, up, down
    assert len(in_muon) == per_block * 2

    top = len(transformer_blocks(model.base_model)) + 1
    for name, depth in parameter_depths(model).items():
        if match := re.search(block + r"(\d+)\.", name):
            assert depth == int(match.group(1)) + 1, name
        elif "qa_outputs" in name:
            assert depth is None
        elif re.search(r"embed|wte|wpe", name):
            assert depth == 0, name
        else:  # the final norm
            assert depth == top, name


def tiny_gpt2_classifier():
    config = transformers.GPT2Config(vocab_size=100, n_embd=48, n_layer=2, n_head=3, n_positions=64, pad_token_id=0,
                                     num_labels=2)
    torch.manual_seed(0)
    model = transformers.GPT2ForSequenceClassification(config).eval()
    ids = torch.randint(1, 100, (2, 7))
    ids[1, 5:] = 0  # right padding
    return model, {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_gpt2_mean_pooling_block_gives_the_last_token_the_mean_of_the_text():
    model, batch = tiny_gpt2_classifier()
    add_mean_pooling_layer(model, calibration=batch)
    assert model.config.n_layer == 3
    layer, seen = model.transformer.h[2], {}
    layer.register_forward_hook(lambda m, args, kwargs, out: seen.update(x=args[0], y=out), with_kwargs=True)
    model(**batch)
    d = model.config.n_embd
    value_then_output = layer.attn.c_attn.weight[:, 2 * d:] @ layer.attn.c_proj.weight  # Conv1D: x @ W
    for row, n in ((0, 7), (1, 5)):
        mean = layer.ln_1(seen["x"])[row, :n].mean(0)
        torch.testing.assert_close(seen["y"][row, n - 1], seen["x"][row, n - 1] + mean @ value_then_output,
                                   atol=1e-5, rtol=1e-5)
    # Calibrated: the identity V @ V.T, scaled so that the mean outweighs the residual.
    scale = value_then_output.diagonal().mean()
    torch.testing.assert_close(value_then_output, scale * torch.eye(d), atol=1e-5, rtol=1e-5)


def test_gpt2_with_mean_pooling_reloads_in_plain_transformers(tmp_path):
    model, batch = tiny_gpt2_classifier()
    add_mean_pooling_layer(model, calibration=batch)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["n_layer"] == 3
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def test_pooling_mean_falls_back_to_last_in_one_line_where_blocks_are_of_another_kind(capsys):
    """GPT-NeoX interleaves q, k and v per head in one Linear: no mean block is built for it."""
    config = transformers.GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, num_labels=2)
    model = transformers.GPTNeoXForSequenceClassification(config)
    add_mean_pooling_layer(model)
    assert capsys.readouterr().out == ("pooling=mean: GPTNeoXModel has no list of Llama- or GPT-2-style transformer "
                                       "blocks to add a mean-pooling block to; using pooling=last\n")
    assert model.config.num_hidden_layers == len(model.gpt_neox.layers) == 2


def test_muon_falls_back_to_adamw_in_one_line_without_blocks(monkeypatch, capsys):
    model, _ = tiny_gpt2_classifier()
    monkeypatch.setattr("pipeline.optim.transformer_blocks", lambda body: None)
    optimizer = build_optimizer(model, default_recipe("squad"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert capsys.readouterr().out == ("optimizer=muon: GPT2Model has no list of transformer blocks to take weight "
                                       "matrices from; using optimizer=adamw\n")
