"""Print a fine-tuned model's prediction for one input, with its score.

A classifier prints `label<TAB>probability`. A QA model prints
`answer<TAB>score<TAB>start<TAB>end`: the score is start_logit + end_logit of the span, and
`context[start:end] == answer` (character offsets). The QA windows use the fine-tuning run's
max_length, doc_stride, n_best and max_answer_length, read from the run's config.yaml (the
folder above final/), so a context longer than one window is answered as evaluation does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from pipeline.checkpoint import default_finetuned, inspect_model_folder, load_tokenizer, load_weights, model_kind
from pipeline.errors import PipelineError
from pipeline.tasks import get_task
from pipeline.tasks.qa import Answer, postprocess_with_scores, prepare_eval_features

# Used when the checkpoint has no run config.yaml beside it (the recipe defaults for SQuAD).
QA_DEFAULTS = {"max_length": 384, "doc_stride": 128, "n_best": 20, "max_answer_length": 30}


def run(task_name: str, ckpt: str | None, text: str | None, question: str | None, context: str | None) -> None:
    task = get_task(task_name)
    folder = Path(ckpt) if ckpt else default_finetuned(task.name)
    config = inspect_model_folder(folder)
    kind = model_kind(config)
    if kind != task.model_kind:
        raise PipelineError(f"{folder} is a {kind} checkpoint, but task {task.name} needs a {task.kind} model: "
                            f"pass CKPT=runs/finetune/{task.name}/final")
    if kind == "classifier":
        if not text:
            raise PipelineError(f"task {task.name} classifies a text: pass TEXT=\"...\"")
        tokenizer = load_tokenizer(folder, config)
        model = load_weights(folder, AutoModelForSequenceClassification, config).eval()
        with torch.no_grad():
            # truncation=True: the max_length and side the run was trained with (saved in its tokenizer)
            probs = model(**tokenizer(text, truncation=True, return_tensors="pt")).logits.softmax(-1)[0]
        best = int(probs.argmax())
        print(f"{model.config.id2label[best]}\t{probs[best]:.4f}")
        return
    if question is None or context is None:
        raise PipelineError(f"task {task.name} answers a question: pass QUESTION=\"...\" CONTEXT=\"...\"")
    if not question.strip():
        raise PipelineError(f"task {task.name}: the question is empty: pass a non-empty QUESTION=\"...\"")
    if not context.strip():
        raise PipelineError(f"task {task.name}: the context is empty: pass CONTEXT=\"...\" with the text "
                            "that holds the answer")
    settings = qa_settings(folder)
    tokenizer = load_tokenizer(folder, config)
    model = load_weights(folder, AutoModelForQuestionAnswering, config).eval()
    answer = answer_question(model, tokenizer, question, context, **settings)
    print(f"{answer.text}\t{answer.score:.4f}\t{answer.start}\t{answer.end}")


def qa_settings(folder: Path) -> dict:
    """max_length, doc_stride, n_best, max_answer_length of the run that saved `folder`."""
    settings = dict(QA_DEFAULTS)
    path = Path(folder).parent / "config.yaml"
    if not path.is_file():
        return settings
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"{path} cannot be read as YAML ({str(e).splitlines()[0][:120]}): "
                            "restore the run's config.yaml or move it away to use the defaults") from None
    if not isinstance(recipe, dict):
        raise PipelineError(f"{path} is not a mapping of recipe keys: restore the run's config.yaml "
                            "or move it away to use the defaults")
    for key in settings:
        value = recipe.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PipelineError(f"{path}: {key}={value!r} must be a positive integer: fix it or move the file away")
        settings[key] = value
    return settings


def answer_question(model, tokenizer, question: str, context: str, max_length: int = 384, doc_stride: int = 128,
                    n_best: int = 20, max_answer_length: int = 30, batch_size: int = 32) -> Answer:
    """The best span of `context` for `question`, over all the windows the context needs.

    The windows go through the model in batches (right-padded: the model is causal, so a
    window's logits do not depend on the padding after it); `model(input_ids=, attention_mask=)`
    must return start_logits and end_logits.
    """
    example = {"id": ["q"], "question": [question], "context": [context]}
    try:
        features = prepare_eval_features(example, tokenizer, max_length=max_length, doc_stride=doc_stride)
    except PipelineError as e:  # the question leaves no room for the context in a window
        raise PipelineError(f"the question is too long for windows of max_length={max_length} tokens that overlap "
                            f"by doc_stride={doc_stride} (the run's settings): shorten the question") from e
    starts, ends = qa_logits(model, tokenizer, features["input_ids"], batch_size)
    return postprocess_with_scores(example, features, starts, ends, n_best, max_answer_length)["q"]


def qa_logits(model, tokenizer, windows: list[list[int]], batch_size: int = 32) -> tuple[list, list]:
    """Start and end logits of each window (as numpy arrays of the window's length)."""
    device = next(model.parameters()).device
    starts, ends = [], []
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            batch = tokenizer.pad({"input_ids": chunk}, padding=True, padding_side="right", return_tensors="pt")
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            for row, ids in enumerate(chunk):
                starts.append(out.start_logits[row, : len(ids)].float().cpu().numpy())
                ends.append(out.end_logits[row, : len(ids)].float().cpu().numpy())
    return starts, ends

