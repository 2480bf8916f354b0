"""Reading a recipe: a YAML file and `key=value` overrides, merged onto a schema and validated.

A recipe is data. It is read with a safe YAML loader (no tags that build Python objects),
merged onto the schema's defaults (pipeline/config.py), then the command line's overrides are
merged on top. OmegaConf rejects unknown keys and values of the wrong type; the schema's
`validate()` checks the rest. Every problem becomes a one-line PipelineError (exit code 2).
"""

from __future__ import annotations

import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from pipeline import precision
from pipeline.config import TrainConfig
from pipeline.errors import PipelineError

Config = TypeVar("Config", bound=TrainConfig)


def load_recipe(schema: type[Config], path: str | Path | None, overrides: list[str]) -> Config:
    """Read a YAML recipe (or only the schema's defaults), apply overrides, validate.

    The layers, last wins: the schema's defaults, the YAML file, its `fp32_overrides` where this machine trains
    in fp32 (`applied_fp32_overrides`), the command line. The fp32 layer is checked on every machine, so a wrong
    key or value in it fails here too, not only where it applies. Where the command line asks for what the
    block contradicts (finetune_method=lora against a block's adapt_steps), the command line wins: the block is
    left out, in one line, and the run records none. Otherwise the run records the block's keys that the command
    line does not set itself."""
    recipe = _read_yaml(Path(path)) if path is not None else {}
    command_line = _parse_overrides(overrides)
    cfg = _merge(schema, [recipe, command_line], path)
    if cfg.fp32_overrides:
        block = _nest(cfg.fp32_overrides.items())
        try:
            _merge(schema, [recipe, block], path).validate()  # the recipe with its block is sound on its own
            fp32_cfg = _merge(schema, [recipe, block, command_line], path)
        except PipelineError as e:
            raise PipelineError(f"in fp32_overrides: {e}") from None
        if applied_fp32_overrides(cfg):
            try:
                fp32_cfg.validate()
                cfg = fp32_cfg
                # A key the command line sets is the command line's: the run prints and records only the
                # block's keys that took effect (squad's muon_learning_rate=0.005 is not "0.01 applied").
                cfg.fp32_overrides = {k: v for k, v in cfg.fp32_overrides.items() if not _sets(command_line, k)}
            except PipelineError as e:
                cfg.validate()  # the command line's own mistakes are reported as ever
                if os.environ.get("RANK", "0") == "0":  # once, not once per process of a distributed launch
                    print(f"fp32: the recipe's fp32_overrides ({format_overrides(cfg.fp32_overrides)}) are left "
                          f"out: with the command line they fail ({e})", file=sys.stderr)
                cfg.fp32_overrides = {}
    cfg.validate()
    return cfg


def format_overrides(mapping: dict) -> str:
    """{"model.hidden_size": 128, ...} as the command line writes it: "model.hidden_size=128, ..."."""
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


def load_run_config(schema: type[Config], path: str | Path) -> Config:
    """A run's saved config.yaml, as it trained: its `fp32_overrides` are already in its values, so they are
    not applied again (a bf16 run evaluated on a CPU without native bf16 keeps the shape it trained)."""
    cfg = _merge(schema, [_read_yaml(Path(path))], path)
    cfg.validate()
    return cfg


def applied_fp32_overrides(cfg: TrainConfig) -> dict | None:
    """`cfg.fp32_overrides` where they apply (`auto` precision that this machine resolves to fp32), else None:
    what a run prints at start and records in run.json / eval.json."""
    if not cfg.fp32_overrides or cfg.mixed_precision != "auto":
        return None
    return cfg.fp32_overrides if precision.resolve("auto", precision.run_device()).mode == "no" else None


def _merge(schema: type[Config], layers: list[dict], path: str | Path | None) -> Config:
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, *layers)
        cfg = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        known = ", ".join(_keys(schema, e.full_key))
        raise PipelineError(f"unknown recipe key '{e.full_key}': use one of {known}") from None
    except ValidationError as e:
        raise PipelineError(f"recipe key '{e.full_key}' has the wrong type: {str(e.msg).splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise PipelineError(f"invalid recipe: {str(e).splitlines()[0]}") from None
    if not cfg.name:
        cfg.name = Path(path).stem if path is not None else "default"
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"recipe file not found: {path} (pass --recipe with an existing YAML file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise PipelineError(f"recipe {path} is not valid YAML{at}: fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"recipe {path} must be a mapping of key: value, not {type(data).__name__}")
    return data


def _parse_overrides(overrides: list[str]) -> dict:
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PipelineError(f"override '{item}' is not key=value (e.g. max_steps=100)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, bool) and raw.lower() not in ("true", "false"):
            value = raw  # YAML 1.1 reads no/yes/on/off as booleans: mixed_precision=no means "no"
        pairs.append((key, value))
    return _nest(pairs)


def _sets(nested: dict, dotted: str) -> bool:
    """Whether {"model": {"hidden_size": 192}} sets "model.hidden_size"."""
    node = nested
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _nest(pairs) -> dict:
    """{"model.hidden_size": 192} → {"model": {"hidden_size": 192}}: dotted keys as the YAML's nesting."""
    result: dict = {}
    for key, value in pairs:
        node = result
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def _keys(schema: type, full_key: str) -> list[str]:
    """The valid keys at the level where an unknown key was found."""
    parts = str(full_key).split(".")[:-1]
    cls = schema
    for part in parts:
        sub = {f.name: f for f in fields(cls)}.get(part)
        default = sub.default_factory() if sub is not None and callable(sub.default_factory) else None
        if default is None or not hasattr(default, "__dataclass_fields__"):
            break
        cls = type(default)
    return sorted(f.name for f in fields(cls))
