"""Bidirectional attention for a head on a causal body: every token reads the whole input.

A causal LM's token sees only what comes before it, which suits the next-word objective it was
pretrained on but not span extraction: whether a SQuAD answer ends at a token depends on the words
after it. transformers v5 builds a full (padding-only) mask instead of a causal one when the config
says `is_causal: false`, for any family whose model builds its masks with `create_causal_mask`
(Llama, Mistral, Qwen2, GPT-2, ...). The flag is saved in config.json, so the fine-tuned model
reloads with `AutoModelForQuestionAnswering.from_pretrained` and attends the same way.

A family that ignores the flag would quietly stay causal, so `check` proves the switch on the built
model: the first token's output must change when the last token does.
"""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


def enable(config) -> None:
    """Ask for bidirectional attention; transformers' mask builders read `config.is_causal`."""
    config.is_causal = False


def is_bidirectional(config) -> bool:
    return getattr(config, "is_causal", True) is False


def check(model) -> None:
    """Raise unless the model's first token really sees the last one (a 4-token probe, no gradient)."""
    vocab = model.config.vocab_size
    ids = torch.tensor([[1, 2, 3, 4]]) % vocab
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % vocab
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        first = [model.base_model(input_ids=x.to(device)).last_hidden_state[0, 0].float() for x in (ids, changed)]
    model.train(was_training)
    if torch.equal(first[0], first[1]):
        raise PipelineError(f"bidirectional=true: the {model.config.model_type} model stays causal with is_causal=false "
                            "(its attention masks ignore the flag): set bidirectional=false for this family")

