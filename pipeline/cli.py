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
        raise PipelineError(f"{message} (see: python -m {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True, parser_class=_Parser)

    p = stages.add_parser("pretrain", help="pretrain a causal LM from a recipe")
    p.add_argument("--recipe", default="recipes/pretrain/cpu.yaml")
    p.add_argument("--out", help="output folder (default runs/pretrain/<recipe name>)")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    for name, help, out in (("finetune", "fine-tune a task head from a pretrained checkpoint",
                             "runs/finetune/<task> (with init=scratch: <task>-scratch)"),
                            ("probe", "linear probes on a checkpoint's frozen hidden states, against random init",
                             "runs/probe/<task>")):
        t = stages.add_parser(name, help=help)
        t.add_argument("--task", required=True)
        t.add_argument("--ckpt", help="pretrained model folder (default: runs/pretrain/cpu/final, make pretrain's)")
        t.add_argument("--recipe", help="default: recipes/finetune/<task>.yaml")
        t.add_argument("--out", help=f"default: {out}")
        t.add_argument("overrides", nargs="*", metavar="key=value")

    c = stages.add_parser("curves", help="sample efficiency: every classification task at 100 and 1,000 labels")
    c.add_argument("--ckpt", help="pretrained model folder (default: the one make all's fine-tunes started "
                                   "from, else runs/pretrain/cpu/final)")
    c.add_argument("--tasks", nargs="+", help="default: every classification task")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], choices=[100, 1000])
    c.add_argument("--runs", default="runs", help="where make all's runs are (the full-budget points)")
    c.add_argument("--out", default="runs/curves")
    c.add_argument("--parallel", type=int, default=2, help="fine-tunes at a time, each on cores/parallel threads")
    c.add_argument("overrides", nargs="*", metavar="key=value", help="passed to every fine-tune")

    a = stages.add_parser("study", help="make all's runs: pretrain the cpu recipe, then every task × seed × "
                                        "{pretrained, scratch} fine-tune; finished runs skipped, killed ones resumed")
    a.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    a.add_argument("--parallel", type=int, default=1, help="fine-tunes at a time, each on cores/parallel threads")
    a.add_argument("--launch", help="the command before `pipeline STAGE ...` (make's $(LAUNCH), e.g. torchrun "
                                    "... -m); default: this python -m")

    r = stages.add_parser("predict", help="print a fine-tuned model's prediction with its score")
    r.add_argument("--task", required=True)
    r.add_argument("--ckpt", help="default: runs/finetune/<task>/final")
    r.add_argument("--text", help="classification input")
    r.add_argument("--question", help="QA question")
    r.add_argument("--context", help="QA context")

    e = stages.add_parser("evaluate", help="evaluate checkpoints; without --ckpt, every run, then the report")
    e.add_argument("--ckpt", nargs="+", help="model folders to evaluate (writes eval.json beside each)")
    e.add_argument("--runs", default="runs", help="with no --ckpt: evaluate every run under this folder")
    e.add_argument("--report", default="runs/reports",
                   help="where the scoreboard and plots go (the committed reports/ is make report-results)")

    g = stages.add_parser("generate", help="sample text from a causal-LM checkpoint")
    g.add_argument("--ckpt", help="model folder (default: runs/pretrain/cpu/final, make pretrain's)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=80)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork DataLoader workers
    _quiet_libraries()
    try:
        parser = _parser()
        # key=value overrides may come before or after the options: collect the ones argparse left.
        args, extra = parser.parse_known_args(argv)
        unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if extra:
            args.overrides += extra
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


def _quiet_libraries() -> None:
    """Our own progress bar and log lines tell the story; silence the libraries' per-step chatter."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _dispatch(args: argparse.Namespace) -> None:
    if args.stage == "pretrain":
        from pipeline.config import PretrainConfig
        from pipeline.recipe import load_recipe
        from pipeline.stages import pretrain

        cfg = load_recipe(PretrainConfig, args.recipe, args.overrides)
        pretrain.run(cfg, Path(args.out) if args.out else Path("runs/pretrain") / cfg.name)
    elif args.stage == "finetune":
        from pipeline.checkpoint import FINETUNE_ROOT
        from pipeline.stages import finetune

        task, cfg, ckpt = _task_recipe(args)
        suffix = "-scratch" if cfg.init == "scratch" else ""
        finetune.run(task.name, cfg, ckpt, Path(args.out) if args.out else FINETUNE_ROOT / f"{task.name}{suffix}")
    elif args.stage == "probe":
        from pipeline.stages import probe

        task, cfg, ckpt = _task_recipe(args)
        probe.run(task.name, cfg, ckpt, Path(args.out) if args.out else Path("runs/probe") / task.name)
    elif args.stage == "evaluate":
        from pipeline.stages import evaluate

        evaluate.run([Path(c) for c in args.ckpt or []], Path(args.runs), Path(args.report))
    elif args.stage == "curves":
        from pipeline import curves as study
        from pipeline.checkpoint import announce_checkpoint, default_pretrained
        from pipeline.stages import curves

        ckpt = announce_checkpoint(args.ckpt, lambda: study.full_budget_checkpoint(Path(args.runs) / "finetune")
                                   or default_pretrained())
        curves.run(ckpt, args.tasks, Path(args.runs), Path(args.out), args.seeds, args.sizes, args.overrides,
                   args.parallel)
    elif args.stage == "study":
        from pipeline.stages import study

        study.run(args.seeds, args.parallel, args.launch)
    elif args.stage == "predict":
        from pipeline.stages import predict

        predict.run(args.task, args.ckpt, args.text, args.question, args.context)
    elif args.stage == "generate":
        from pipeline.stages import generate

        generate.run(args.ckpt, args.prompt, args.max_new_tokens, args.temperature, args.seed)


def _task_recipe(args: argparse.Namespace):
    """(task, recipe, checkpoint) of a stage that works on one task from a pretrained checkpoint."""
    from pipeline.checkpoint import announce_checkpoint, default_pretrained
    from pipeline.config import FinetuneConfig
    from pipeline.recipe import load_recipe
    from pipeline.tasks import get_task

    task = get_task(args.task)
    recipe = args.recipe or Path("recipes/finetune") / f"{task.name}.yaml"
    if args.recipe is None and not recipe.is_file():
        recipe = None  # the schema's defaults
    cfg = load_recipe(FinetuneConfig, recipe, args.overrides)
    ckpt = announce_checkpoint(args.ckpt, default_pretrained)
    return task, cfg, ckpt
