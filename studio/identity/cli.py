"""``python -m studio score RUN``: likeness, faces found and identity bleed of a run's
checkpoints as a table, the proposed best checkpoint, and ``RUN/likeness.json``."""

from __future__ import annotations

import argparse
import sys

from studio.identity.scores import MAX_BLEED, format_table


def add_cli(sub) -> None:
    p = sub.add_parser("score", help="likeness and identity bleed of a run's checkpoints; "
                       "proposes the best checkpoint")
    p.add_argument("run", help="run folder")
    p.add_argument("--checkpoint", dest="steps", type=int, action="extend", nargs="+",
                   metavar="N", help="score only these checkpoints (default: every complete one)")
    p.add_argument("--prompts", nargs="+", metavar="PROMPT",
                   help="prompts that name the subject (default: the run's validation prompts)")
    p.add_argument("--bleed-prompts", nargs="+", metavar="PROMPT",
                   help="prompts without the trigger (default: validation.bleed_prompts, else "
                        "the class prompt, e.g. 'a photo of a person')")
    p.add_argument("--max-bleed", type=float, default=MAX_BLEED,
                   help=f"highest bleed of a proposed checkpoint (default {MAX_BLEED})")
    p.add_argument("--use-best", action="store_true",
                   help="make the proposed checkpoint the run's LoRA")
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from studio.generate.service import GenerationService
    from studio.identity.rescore import score_run
    from studio.identity.runscore import use_best
    from studio.runs.folder import RunFolder

    run = RunFolder(args.run)
    cfg = run.config()
    gen = GenerationService(base=cfg.model.base, vae=cfg.model.vae).generator()
    result = score_run(run.path, gen, args.steps, args.prompts, args.bleed_prompts,
                       args.max_bleed,
                       progress=lambda what: print(f"scoring {what}", file=sys.stderr))
    shown = [r for r in result.rows if r.step in result.checkpoints
             and (not args.steps or r.step in args.steps)]
    print(format_table(shown, result.proposal.step))
    print(f"\nBest checkpoint: {result.proposal.reason}")
    if args.use_best:
        step, _ = use_best(run.path, args.max_bleed)
        print(f"Checkpoint {step} is now the run's LoRA.")
    print(f"Written: {run.likeness_path}")
    return 0
