"""Why a pretrained last token drowns a mean of the text: two RMS figures, pretrained against random init.

For the first `--texts` training texts of `--task`, tokenized as its fine-tuning recipe does:
- residual: the RMS of the last real token's residual stream as it enters the final norm, which
  is what a last-token classifier reads;
- mean: the RMS of the mean, over the text's tokens, of their states normed to RMS 1 (what a new
  pooling layer's fresh RMSNorm, weight 1, would average: pipeline/pooling.py).
Both are means over the texts, for `--ckpt` and for the same architecture at random init (seed 0).

    .venv/bin/python bench/residual_rms.py                       # emotion, runs/pretrain/cpu/final
    .venv/bin/python bench/residual_rms.py --task sst2 --ckpt runs/pretrain/cpu-seed2/final
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `pipeline`
from pipeline.config import FinetuneConfig  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.heads import load_head  # noqa: E402
from pipeline.tasks import get_task  # noqa: E402


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1).sqrt()


@torch.no_grad()
def residual_and_mean_rms(body, batch: dict) -> tuple[float, float]:
    seen = {}
    hook = body.norm.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hook.remove()
    x, mask = seen["x"].float(), batch["attention_mask"].bool()  # [texts, tokens, hidden], the final norm's input
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # the rightmost real token, either padding side
    residual = rms(x[torch.arange(len(x)), last]).mean()
    normed = x / rms(x).unsqueeze(-1).clamp(min=1e-6)
    mean = torch.einsum("bth,bt->bh", normed, mask.float() / mask.sum(1, keepdim=True))
    return residual.item(), rms(mean).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="runs/pretrain/cpu/final")
    ap.add_argument("--task", default="emotion")
    ap.add_argument("--texts", type=int, default=256)
    a = ap.parse_args()
    task = get_task(a.task)
    recipe = Path("recipes/finetune") / f"{task.name}.yaml"
    cfg = load_recipe(FinetuneConfig, recipe if recipe.is_file() else None, [f"max_train_samples={a.texts}"])
    hub_id, split, rows = task.load(cfg, "train")
    labels = task.label_names(rows, hub_id, split)
    _, tokenizer = load_head(a.ckpt, task.head, "pretrained", 0, "sdpa", **task.head_config(labels))
    features, _ = task.preprocess(rows, tokenizer, cfg, hub_id, split, labels, True)
    batch = task.collator(tokenizer)([{k: f[k] for k in ("input_ids", "attention_mask")} for f in features])
    pretrained = AutoModelForCausalLM.from_pretrained(a.ckpt).eval()
    torch.manual_seed(0)
    random = AutoModelForCausalLM.from_config(pretrained.config).eval()
    print(f"{a.task}, {len(features)} training texts, {a.ckpt}")
    for name, model in (("pretrained", pretrained), ("random init", random)):
        residual, mean = residual_and_mean_rms(model.base_model, batch)
        print(f"{name:>12}: residual RMS at the last token {residual:.2f}, mean of normed states {mean:.2f} "
              f"(ratio {residual / mean:.2g})")


if __name__ == "__main__":
    main()
