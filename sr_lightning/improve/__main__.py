"""``python -m sr_lightning.improve``: DAgger and expert-iteration loops over a one-step model, and their plot.

Each iteration runs guided search with the current model on new TRAINING problems, turns what it
reached into one-step examples (DAgger: BasicSR's own next generation from each population the run
reached; expert iteration: the run's proposals that beat the population's best, and the ancestors
of its final best), fine-tunes on them mixed with imitation lines, and measures guided search vs
BasicSR on the named and held-out problems. The same command resumes a killed loop.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser, Namespace

from ..commands import command_parser
from ..data.generate import TARGETS
from ..evaluation.guided_search import ComparisonSettings
from .loop import Loop, LoopSettings

_LOOP = LoopSettings()  # the defaults of every option
_SEARCH = _LOOP.search


def _loop_options(parser: ArgumentParser, dagger: bool) -> None:
    parser.add_argument("--checkpoint", required=True, help="the start model: a .ckpt or a run directory (its best)")
    parser.add_argument("--out", required=True, help="the loop's folder (an existing one resumes)")
    parser.add_argument("--iterations", type=int, default=3, help="improvement iterations (default 3)")
    parser.add_argument("--problems", type=int, default=_LOOP.problems, help="new training problems per iteration")
    parser.add_argument("--seeds", type=int, default=_LOOP.seeds, help="guided runs per training problem")
    if dagger:
        parser.add_argument("--labels", choices=TARGETS, default=_LOOP.labels, help="which of the expert's next "
                            "generation become targets: all, or the ancestors (new-ancestors: not already in the "
                            "population) of the best it reaches in --expert-generations")
        parser.add_argument("--expert-generations", type=int, default=_LOOP.expert_generations)
    parser.add_argument("--imitation-data", nargs="*", default=[], help="imitation lines to mix in (default: the "
                        "start model's training files)")
    parser.add_argument("--imitation-ratio", type=float, default=_LOOP.imitation_ratio,
                        help="imitation lines per improvement line")
    parser.add_argument("--steps", type=int, default=_LOOP.steps, help="optimizer steps per fine-tune")
    parser.add_argument("--batch-size", type=int, default=_LOOP.batch_size)
    parser.add_argument("--learning-rate", type=float, default=_LOOP.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=_LOOP.warmup_steps)
    parser.add_argument("--val-batches", type=int, default=_LOOP.val_batches,
                        help="validation batches of 32 after each fine-tune")
    parser.add_argument("--precision", default=_LOOP.precision, help="Lightning precision (bf16-mixed on a GPU)")
    parser.add_argument("--generations", type=int, default=_SEARCH.generations, help="generations per run")
    parser.add_argument("--population", type=int, default=_SEARCH.population_size)
    parser.add_argument("--proposals", type=int, default=_SEARCH.proposals, help="slots the model fills")
    parser.add_argument("--distinct", type=bool, default=_SEARCH.distinct, help="repeats fall back to evolution")
    parser.add_argument("--constrained", action="store_true", help="sample only well-formed expressions")
    parser.add_argument("--oversample", type=int, default=_SEARCH.oversample, help="best-of-K proposals")
    parser.add_argument("--temperature", type=float, default=_SEARCH.temperature)
    parser.add_argument("--eval-problems", type=int, default=_SEARCH.held_out, help="held-out problems of the payoff")
    parser.add_argument("--eval-seeds", type=int, default=_SEARCH.seeds, help="seeds of the payoff")
    parser.add_argument("--seed", type=int, default=_LOOP.seed)
    parser.add_argument("--device", default="auto", help="model device for the searches (cpu, cuda, ...)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator for the fine-tunes")
    parser.add_argument("--batch-runs", type=int, default=64, help="guided runs per model call")
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def build_parser() -> ArgumentParser:
    parser = command_parser("python -m sr_lightning.improve", __doc__.splitlines()[0], config_file=False)
    commands = parser.add_subcommands(dest="command")
    for name, dagger in (("dagger", True), ("expert-iteration", False)):
        sub = command_parser(f"python -m sr_lightning.improve {name}", f"the {name} loop")
        _loop_options(sub, dagger)
        commands.add_subcommand(name, sub, help=f"the {name} loop")
    plot = command_parser("python -m sr_lightning.improve plot", "solved runs per iteration, each loop vs BasicSR",
                          config_file=False)
    plot.add_argument("loops", nargs="+", help="loop folders (their summary.jsonl)")
    plot.add_argument("--out", required=True, help="the PNG to write")
    commands.add_subcommand("plot", plot, help="a PNG of solved runs per iteration")
    return parser


def settings_of(name: str, args: Namespace) -> LoopSettings:
    search = ComparisonSettings(generations=args.generations, population_size=args.population, seeds=args.eval_seeds,
                                held_out=args.eval_problems, temperature=args.temperature, proposals=args.proposals,
                                distinct=args.distinct, constrained=args.constrained, oversample=args.oversample)
    return LoopSettings(loop=name, checkpoint=args.checkpoint, problems=args.problems, seeds=args.seeds,
                        labels=args.get("labels", _LOOP.labels),
                        expert_generations=args.get("expert_generations", _LOOP.expert_generations),
                        imitation_data=tuple(args.imitation_data), imitation_ratio=args.imitation_ratio,
                        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        warmup_steps=args.warmup_steps, val_batches=args.val_batches, precision=args.precision,
                        search=search, seed=args.seed)


def run_loop(name: str, args: Namespace) -> None:
    from pathlib import Path

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    loop = Loop(Path(args.out), settings_of(name, args), device, args.batch_runs, args.accelerator)
    loop.run(args.iterations)
    print(f"wrote {Path(args.out) / 'summary.jsonl'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; bad options or inputs are one ``error:`` line and exit status 2."""
    from ..data.points import PointsFileError
    from ..evaluation.checkpoints import EvaluationInputError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "plot":
            from .payoff_plot import plot_payoff

            print(f"wrote {plot_payoff(args.plot.loops, args.plot.out)}")
        else:
            run_loop(args.command, args[args.command])
    except (EvaluationInputError, PointsFileError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
