"""Recipe validation and bad input: exit code 2, one line naming the problem, nothing touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, bad_input_line, run_cli
from pipeline.config import PretrainConfig
from pipeline.recipe import load_recipe
from pipeline.errors import PipelineError


def test_recipe_loads_with_overrides():
    cfg = load_recipe(PretrainConfig, TINY, ["max_steps=7", "model.hidden_size=32", "learning_rate=1e-3"])
    assert (cfg.name, cfg.max_steps, cfg.model.hidden_size, cfg.learning_rate) == ("tiny", 7, 32, 1e-3)
    assert cfg.model.num_layers == 2  # from the YAML
    assert cfg.gradient_accumulation_steps(num_processes=1) == 2
    assert cfg.gradient_accumulation_steps(num_processes=2) == 1


@pytest.mark.parametrize("overrides, message", [
    (["max_stepz=3"], "unknown recipe key 'max_stepz'"),
    (["model.hidden=3"], "unknown recipe key 'model.hidden'"),
    (["max_steps=ten"], "recipe key 'max_steps' has the wrong type"),
    (["mixed_precision=fp8"], "must be one of auto, no, bf16, fp16"),
    (["attn_implementation=fast"], "must be one of eager, sdpa"),
    (["model.num_heads=5"], "multiple of model.num_heads"),
    (["model.num_kv_heads=3"], "must divide model.num_heads"),
    (["learning_rate=-1"], "must be > 0"),
    (["resume=true", "overwrite=true"], "contradict"),
    (["max_steps"], "is not key=value"),
])
def test_invalid_recipes_raise(overrides, message):
    with pytest.raises(PipelineError, match=message):
        load_recipe(PretrainConfig, TINY, overrides)


def test_batch_sizes_must_divide():
    cfg = load_recipe(PretrainConfig, TINY, ["global_batch_size=12", "micro_batch_size=8"])
    with pytest.raises(PipelineError, match="not a multiple of micro_batch_size"):
        cfg.gradient_accumulation_steps(1)


def test_malformed_and_missing_recipe_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1,\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_recipe(PretrainConfig, bad, [])
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("max_steps: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_recipe(PretrainConfig, tagged, [])
    with pytest.raises(PipelineError, match="recipe file not found"):
        load_recipe(PretrainConfig, tmp_path / "nope.yaml", [])


BAD_ARGS = [
    (["bogus_key=1"], "unknown recipe key 'bogus_key'"),
    (["max_steps=abc"], "recipe key 'max_steps' has the wrong type"),
    (["dataset=nobody/no_such_corpus"], "dataset nobody/no_such_corpus not found"),
    (["text_column=body"], "has no column 'body'"),
    (["--recipe", "recipes/pretrain/missing.yaml"], "recipe file not found"),
    (["--frobnicate"], "unrecognized arguments"),
]


def _precious_run(tmp_path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    return out


def _untouched(out: Path) -> bool:
    return sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"] and (out / "metrics.jsonl").read_text() == "precious\n"


@pytest.mark.parametrize("args, message", BAD_ARGS)
def test_cli_bad_input_exits_2_and_touches_nothing(tmp_path, capsys, args, message):
    out = _precious_run(tmp_path)
    recipe = [] if "--recipe" in args else ["--recipe", str(TINY)]
    assert message in bad_input_line(["pretrain", *recipe, "--out", out, *args], capsys)
    assert _untouched(out)


def test_a_real_process_on_bad_input_prints_one_line_and_exits_2(tmp_path):
    """The in-process cases above, once as a user runs it: its own process, nothing but the line."""
    out = _precious_run(tmp_path)
    args, message = BAD_ARGS[0]
    result = run_cli("pretrain", "--recipe", TINY, "--out", out, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == "" and _untouched(out)


@pytest.mark.parametrize("recipe", sorted((TINY.parent).glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_pretrain_recipe_validates(recipe):
    cfg = load_recipe(PretrainConfig, recipe, [])
    assert cfg.name == recipe.stem


def test_default_recipe_trains_within_its_40_minute_promise():
    """make pretrain is sold as a 40-minute run: the time budget, not a step count, has to hold it there."""
    cfg = load_recipe(PretrainConfig, TINY.parent / "cpu.yaml", [])
    assert cfg.max_train_minutes is not None and cfg.max_train_minutes <= 40
    assert cfg.max_steps > 10 * cfg.warmup_steps  # an upper bound, not the limit that binds
