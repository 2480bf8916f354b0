"""Sample text from a causal-LM checkpoint."""

from __future__ import annotations

from pipeline.checkpoint import announce_checkpoint, default_pretrained, load_causal_lm
from pipeline.lm import generate_samples


def run(ckpt: str | None, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> None:
    folder = announce_checkpoint(ckpt, default_pretrained)
    model, tokenizer = load_causal_lm(folder)
    [text] = generate_samples(model, tokenizer, [prompt], max_new_tokens, seed=seed, temperature=temperature)
    print(text)
