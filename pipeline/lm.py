"""Causal-LM batches, validation metrics and samples, shared by pretraining and evaluation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from pipeline.corpus import PackedBlocks, document_positions
from pipeline.tokenizer import token_byte_lengths


class PackedCollator:
    """Stack packed blocks into a batch; with doc masking, add per-document position ids.

    Labels are the inputs: the model shifts them by one itself. With restarting position_ids
    and no attention_mask, transformers builds the block-diagonal causal mask.
    """

    def __init__(self, eos_id: int, doc_masking: bool):
        self.eos_id, self.doc_masking = eos_id, doc_masking

    def __call__(self, blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack(blocks)
        batch = {"input_ids": input_ids, "labels": input_ids}
        if self.doc_masking:
            batch["position_ids"] = document_positions(input_ids, self.eos_id)
        return batch


@torch.no_grad()
def evaluate_lm(model, blocks: PackedBlocks, accelerator: Accelerator, tokenizer, micro_batch_size: int,
                doc_masking: bool) -> dict:
    """Validation loss (nats/token), perplexity and bits-per-byte over `blocks`.

    Bits-per-byte divides the summed NLL by the UTF-8 bytes the predicted tokens stand for,
    so it compares models with different tokenizers.
    """
    was_training = model.training
    model.eval()
    byte_lengths = torch.from_numpy(token_byte_lengths(tokenizer)).to(accelerator.device)
    collate = PackedCollator(tokenizer.eos_token_id, doc_masking)
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # nll, tokens, bytes
    shard = list(range(accelerator.process_index, len(blocks), accelerator.num_processes))
    for start in range(0, len(shard), micro_batch_size):
        batch = collate([blocks[i] for i in shard[start:start + micro_batch_size]])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        targets = batch.pop("labels")[:, 1:]
        with accelerator.autocast():
            logits = model(**batch, use_cache=False).logits[:, :-1]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        sums += torch.stack([nll.double(), torch.tensor(targets.numel(), device=sums.device, dtype=torch.float64),
                             byte_lengths[targets].sum().double()])
    sums = accelerator.reduce(sums, "sum")
    nll, n_tokens, n_bytes = sums.tolist()
    model.train(was_training)
    loss = nll / n_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nll / (math.log(2) * n_bytes),
            "eval_tokens": int(n_tokens)}


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int = 0,
                     temperature: float = 0.8, top_k: int = 50) -> list[str]:
    """Sample continuations without disturbing the training RNG (so resumed runs stay exact)."""
    was_training = model.training
    model.eval()
    outputs = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)  # "<bos> prompt"
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=True, temperature=temperature, top_k=top_k,
                                 pad_token_id=tokenizer.pad_token_id)
            outputs.append(tokenizer.decode(out[0, 1:], skip_special_tokens=True))
    model.train(was_training)
    return outputs

