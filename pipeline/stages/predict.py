"""Print a fine-tuned model's prediction for one input, with its score."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from pipeline.checkpoint import inspect_model_folder, load_tokenizer, load_weights, model_kind
from pipeline.errors import PipelineError
from pipeline.tasks import get_task
from pipeline.tasks.qa import postprocess_with_scores, prepare_eval_features


def run(task_name: str, ckpt: str | None, text: str | None, question: str | None, context: str | None) -> None:
    task = get_task(task_name)
    folder = Path(ckpt) if ckpt else Path("runs/finetune") / task.name / "final"
    config = inspect_model_folder(folder)
    kind = model_kind(config)
    if kind != task.model_kind:
        raise PipelineError(f"{folder} is a {kind} checkpoint, but task {task.name} needs a {task.kind} model: "
                            f"pass CKPT=runs/finetune/{task.name}/final")
    tokenizer = load_tokenizer(folder, config)
    if kind == "classifier":
        if not text:
            raise PipelineError(f"task {task.name} classifies a text: pass TEXT=\"...\"")
        model = load_weights(folder, AutoModelForSequenceClassification, config).eval()
        with torch.no_grad():
            probs = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        best = int(probs.argmax())
        print(f"{model.config.id2label[best]}\t{probs[best]:.4f}")
        return
    if not (question and context):
        raise PipelineError(f"task {task.name} answers a question: pass QUESTION=\"...\" CONTEXT=\"...\"")
    model = load_weights(folder, AutoModelForQuestionAnswering, config).eval()
    example = {"id": ["q"], "question": [question], "context": [context]}
    features = prepare_eval_features(example, tokenizer, max_length=384, doc_stride=128)
    with torch.no_grad():
        starts, ends = [], []
        for ids in features["input_ids"]:
            out = model(input_ids=torch.tensor([ids]))
            starts.append(out.start_logits[0].numpy())
            ends.append(out.end_logits[0].numpy())
    answer, score = postprocess_with_scores(example, features, starts, ends)["q"]
    print(f"{answer}\t{score:.4f}")
