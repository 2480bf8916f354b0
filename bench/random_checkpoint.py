"""A control checkpoint: a pretrained checkpoint's architecture and tokenizer with random weights.

Fine-tuning from it with init=pretrained runs every pretrained-only step (task-adaptive LM training)
on a body that learned nothing, which tells that step's own effect from what pretraining buys:

    python bench/random_checkpoint.py runs/pretrain/cpu/final runs/bench/random-ckpt
    python bench/transfer.py --labels 1000 --variants "the curve cell" --ckpt runs/bench/random-ckpt \\
        --runs runs/bench/transfer_n1000_random --report reports/bench/transfer_n1000_random
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.checkpoint import inspect_model_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path, help="the pretrained checkpoint whose shape and tokenizer to copy")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    inspect_model_folder(args.ckpt)
    torch.manual_seed(args.seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.ckpt)).save_pretrained(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (args.ckpt / name).is_file():
            shutil.copy(args.ckpt / name, args.out / name)
    print(f"wrote {args.out}: {args.ckpt}'s architecture and tokenizer, random weights (seed {args.seed})")


if __name__ == "__main__":
    main()
