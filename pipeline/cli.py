"""`python -m pipeline STAGE ...`: parse arguments, run a stage, turn bad input into exit code 2.

Bad input raises PipelineError anywhere below; here it becomes one line on stderr with exit
code 2 and no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.errors import PipelineError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise PipelineError(f"{message} (see: python -m pipeline {self.prog.split()[-1]} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True, parser_class=_Parser)

    p = stages.add_parser("pretrain", help="pretrain a causal LM from a recipe")
    p.add_argument("--recipe", default="recipes/pretrain/cpu.yaml")
    p.add_argument("--out", help="output folder (default runs/pretrain/<recipe name>)")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    g = stages.add_parser("generate", help="sample text from a causal-LM checkpoint")
    g.add_argument("--ckpt", help="model folder (default: the newest runs/pretrain/*/final)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=80)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork DataLoader workers
    try:
        args = _parser().parse_args(argv)
        _dispatch(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:  # training ended on purpose (interrupted, non-finite loss)
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        print(f"error: {e}" if code != 130 else str(e), file=sys.stderr)
        sys.exit(code)


def _dispatch(args: argparse.Namespace) -> None:
    if args.stage == "pretrain":
        from pipeline.config import PretrainConfig, load_recipe
        from pipeline.stages import pretrain

        cfg = load_recipe(PretrainConfig, args.recipe, args.overrides)
        pretrain.run(cfg, Path(args.out) if args.out else Path("runs/pretrain") / cfg.name)
    elif args.stage == "generate":
        from pipeline.stages import generate

        generate.run(args.ckpt, args.prompt, args.max_new_tokens, args.temperature, args.seed)
