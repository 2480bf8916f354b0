"""Run folders and checkpoints.

A run folder holds `config.yaml`, `metrics.jsonl`, TensorBoard logs, `checkpoints/step-N/`
(full training state via `accelerator.save_state`) and `final/` (a Hugging Face model folder
with its tokenizer). Every folder is written under a temporary name and renamed into place,
so a kill during a save never leaves a half-written checkpoint under a real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open

from pipeline.errors import PipelineError
from pipeline.json_files import write_json

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint

# What a run writes into its folder. The writers take the names from here and overwrite=true
# clears exactly this list, so a rerun never keeps a file of the run it replaces.
FINAL = "final"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD = "tensorboard"  # the tracker's folder: the trainer's init_trackers("tensorboard")
CONFIG_FILE = "config.yaml"
CORPUS_FILE = "corpus.json"
SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
EVAL_FILE = "eval.json"
PREDICTIONS_FILE = "predictions.json"
ADAPT_DIR = "adapt"  # fine-tuning: the body after task-adaptive LM training (pipeline/adapt.py)
BEST_DIR = "best"  # fine-tuning: the best weights so far on the dev split (pipeline/early_stopping.py)
RUN_FILES = (FINAL, CHECKPOINTS, METRICS_FILE, TENSORBOARD, CONFIG_FILE, CORPUS_FILE, SAMPLES_FILE, RUN_FILE,
             EVAL_FILE, PREDICTIONS_FILE, ADAPT_DIR, BEST_DIR)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to silently overwrite a run; clear it only when asked to."""
    has_run = (out / FINAL).exists() or (out / CHECKPOINTS).exists()
    if has_run and not (resume or overwrite):
        raise PipelineError(
            f"{out} already holds a run: pass resume=true to continue it, overwrite=true to start over, "
            "or --out to write elsewhere"
        )
    if resume and (out / FINAL).exists():
        # Its last checkpoint is its last step: a resume would train nothing and then rewrite the
        # run's records from an empty evaluation, losing what the run measured.
        raise PipelineError(f"{out} holds a finished run (final/ exists), so there is nothing to resume: "
                            "pass overwrite=true to retrain, or --out to write elsewhere")


def clear_run_dir(out: Path) -> None:
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = out / CHECKPOINTS
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = STEP_DIR.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1][1] if found else None


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, state: dict, keep: int) -> Path:
    """Save the full training state as checkpoints/step-N, atomically; keep the newest `keep`."""
    final = out / CHECKPOINTS / f"step-{step}"
    tmp = out / CHECKPOINTS / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a kill during an earlier save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    handle = accelerator.register_save_state_pre_hook(partial(_drop_tied_copies, accelerator))
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        handle.remove()
    accelerator.wait_for_everyone()  # every process has written its part (e.g. its RNG state)
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _drop_tied_copies(accelerator: Accelerator, models: list, weights: list[dict], output_dir: str) -> None:
    """Leave tied weights and frozen parameters out of the saved model state.

    safetensors cannot store one tensor under two names, so accelerate drops the second name
    itself, with a warning at every checkpoint. Dropping the declared tie here saves the same file
    (save_pretrained does the same), loads the same way, and keeps that warning for a real surprise.
    A frozen parameter (LoRA's body) never changes: the resumed run rebuilds it from the checkpoint it
    started from, so a LoRA checkpoint holds the adapters and the heads, not a copy of the whole body.
    """
    for model, state in zip(models, weights):
        unwrapped = accelerator.unwrap_model(model)
        tied = getattr(unwrapped, "all_tied_weights_keys", {})  # {target: source}
        frozen = frozen_parameter_names(unwrapped)
        for name in [n for n in state if n.removeprefix("module.") in tied.keys() | frozen]:  # DDP says module.
            del state[name]


def frozen_parameter_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def load_checkpoint(accelerator: Accelerator, path: Path, model: torch.nn.Module) -> dict:
    """Restore model, optimizer and RNG from `path`; return the trainer state.

    Weights come from safetensors; optimizer and RNG state go through torch.load with
    weights_only=True, which refuses any pickled object that is not plain tensors and data. Where
    `model` has frozen parameters the checkpoint left them out (they are the starting checkpoint's),
    so the load is not strict: instead every parameter that trains must be in the file.
    """
    unwrapped = accelerator.unwrap_model(model)
    frozen = frozen_parameter_names(unwrapped)
    try:
        if frozen:
            weights = path / "model.safetensors"
            with safe_open(weights, "pt") as f:
                saved = {key.removeprefix("module.") for key in f.keys()}
            tied = getattr(unwrapped, "all_tied_weights_keys", {})
            missing = [name for name, _ in unwrapped.named_parameters() if name not in saved | frozen | tied.keys()]
            if missing:
                raise KeyError(f"{weights.name} lacks {len(missing)} trained parameters, e.g. {missing[0]}")
        accelerator.load_state(str(path), load_kwargs={"weights_only": True}, **({"strict": False} if frozen else {}))
    except (pickle.UnpicklingError, RuntimeError, OSError, KeyError) as e:
        raise PipelineError(f"checkpoint {path} cannot be loaded safely ({str(e).splitlines()[0][:120]}): "
                            "delete it to resume from an older one, or start over with overwrite=true") from None
    return json.loads((path / STATE_FILE).read_text())


def truncate_metrics(out: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (a killed run may have gone further)."""
    path = out / METRICS_FILE
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in rows))


def save_final(accelerator: Accelerator, model, tokenizer, folder: Path, extra_files: dict | None = None,
               extra_dirs: dict[str, Path] | None = None) -> None:
    """A Hugging Face model folder (safetensors) with the tokenizer, renamed into place.

    `extra_dirs` ({name: folder} written by the main process) are moved inside it, e.g. LoRA's adapter/."""
    if accelerator.is_main_process:
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for name, path in (extra_dirs or {}).items():
            os.replace(path, tmp / name)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    accelerator.wait_for_everyone()


# ---- reading model folders --------------------------------------------------------------
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
# By the suffix of the saved architecture; GPT-2 calls its causal LM GPT2LMHeadModel.
KINDS = {"ForCausalLM": "causal_lm", "LMHeadModel": "causal_lm", "ForSequenceClassification": "classifier",
         "ForQuestionAnswering": "qa"}


def inspect_model_folder(path: str | Path):
    """Check that `path` is a safetensors Hugging Face model folder; return its config."""
    from transformers import AutoConfig

    path = Path(path)
    if not path.is_dir():
        raise PipelineError(f"checkpoint {path} does not exist: pass a model folder such as runs/pretrain/cpu/final")
    if not (path / "config.json").is_file():
        raise PipelineError(f"{path} is not a checkpoint (no config.json): pass a model folder such as "
                            "runs/pretrain/cpu/final")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise PipelineError(f"{path} holds pickle files ({', '.join(pickles)}), which are never loaded: "
                            "keep only safetensors weights in a checkpoint folder")
    if not any(path.glob("*.safetensors")):
        raise PipelineError(f"{path} has no safetensors weights: save the model with save_pretrained()")
    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, OSError, KeyError) as e:
        raise PipelineError(f"{path}/config.json is not a valid model config ({str(e).splitlines()[0][:120]})") from None


def model_kind(config) -> str:
    for arch in config.architectures or []:
        for suffix, kind in KINDS.items():
            if arch.endswith(suffix):
                return kind
    raise PipelineError(f"unknown model kind {config.architectures}: expected a causal LM, classifier or QA model")


def load_tokenizer(path: Path, config):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path} has no usable tokenizer ({str(e).splitlines()[0][:120]}): "
                            "save it beside the model with tokenizer.save_pretrained()") from None
    if len(tokenizer) > config.vocab_size:
        raise PipelineError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only "
                            f"{config.vocab_size} embeddings: they do not belong together; save them from one run")
    return tokenizer


def load_causal_lm(path: str | Path):
    from transformers import AutoModelForCausalLM

    path = Path(path)
    config = inspect_model_folder(path)
    if model_kind(config) != "causal_lm":
        raise PipelineError(f"{path} is a {model_kind(config)} checkpoint, not a causal LM: pass a pretrain final/ folder")
    tokenizer = load_tokenizer(path, config)
    return load_weights(path, AutoModelForCausalLM, config), tokenizer


def load_weights(path: Path, model_class, config, **kwargs):
    """`model_class.from_pretrained` from safetensors only, on the attention the config needs."""
    from pipeline.attention import attn_implementation_for

    return model_class.from_pretrained(path, use_safetensors=True,
                                       attn_implementation=attn_implementation_for(config, "sdpa"), **kwargs)


# What `make pretrain` (recipes/pretrain/cpu.yaml) writes: the checkpoint a stage uses without --ckpt. Never
# "the newest run": a study's checkpoint (cpu-seed2, cpu-v4096) would be picked up the moment it is newer.
DEFAULT_PRETRAINED = Path("runs/pretrain/cpu") / FINAL
# Where `make finetune TASK=<task>` writes (<task>, or <task>-scratch for the control).
FINETUNE_ROOT = Path("runs/finetune")


def default_pretrained() -> Path:
    return _made_by(DEFAULT_PRETRAINED, "no checkpoint", "make pretrain")


def default_finetuned(task: str) -> Path:
    """What `make finetune TASK=<task>` writes: the model `make predict` answers with, without --ckpt."""
    return _made_by(FINETUNE_ROOT / task / FINAL, "no fine-tuned model", f"make finetune TASK={task}")


def _made_by(folder: Path, what: str, command: str) -> Path:
    """`folder` if the make command that writes it has run, else one line naming that command."""
    if not (folder / "config.json").is_file():
        raise PipelineError(f"{what} at {folder}, where {command} writes it: run {command} first, or pass --ckpt "
                            "(make CKPT=<folder>)")
    return folder


def announce_checkpoint(given: str | Path | None, default) -> Path:
    """The checkpoint a stage works from (`given`, else `default()`), said in the stage's first line."""
    folder = Path(given) if given else default()
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"checkpoint: {folder}" + ("" if given else " (the default: pass --ckpt or CKPT=... for another)"),
              flush=True)
    return folder


def fingerprint(folder: Path) -> str:
    """sha256 of the folder's weight files: changes exactly when the model does."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
