"""Evaluate the one-step model: ``python evaluate.py`` (report) or ``python evaluate.py search``.

With no arguments the report evaluates the BEST checkpoint (lowest val/loss) of the newest run
under ``runs/`` on that run's validation files, and writes report.json, report.md,
predictions.jsonl and validation_curves.png. ``search`` runs neural-guided search against
plain BasicSR on the named benchmark problems and held-out generated problems (or ``--problem-file``); ``search --shard I/N``
runs one part of it, and ``search merge DIRS...`` puts the parts' results together.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from sr_lightning.commands import command_parser, shard

COMMANDS = ("report", "search", "merge")


def _common(parser: ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="a .ckpt, a run directory (its best checkpoint) or an HF GPT-Neo "
                                             "directory (default: the best checkpoint of the newest run)")
    parser.add_argument("--runs", default="runs", help="where to look for the newest run (default: runs)")
    parser.add_argument("--tokenizer", help="tokenizer file, for HF directories without tokenizer.json")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", help="output directory (default: RUN/evaluation or RUN/search)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def build_parser() -> ArgumentParser:
    parser = command_parser("evaluate.py", __doc__.splitlines()[0], config_file=False)
    commands = parser.add_subcommands(dest="command")
    report = command_parser("evaluate.py report", "metrics, findings and samples on a data file")
    _common(report)
    report.add_argument("--data", nargs="+", help="JSONL files or globs, plain or .gz "
                                                  "(default: the run's validation files)")
    report.add_argument("--problems", help="points file with X/y per expression id: JSON, NPZ or the original's "
                                           "gzipped pickle (default: the run's --data.points_file, else the file "
                                           "each record's metadata names, or problems.json, beside the data; "
                                           "X_data/y_data in a record come first)")
    report.add_argument("--limit", type=int, help="evaluate only the first N lines (default: the lines the run "
                                                  "validated on, so val_loss is its val/loss; 0: every line)")
    report.add_argument("--batch-size", type=int, default=32)
    report.add_argument("--max-new-tokens", type=int, default=128)
    report.add_argument("--samples", type=int, default=16, help="a direct model's sampled guesses per problem "
                        "(best-of-k, besides the greedy one; default 16)")
    report.add_argument("--constrained", action="store_true", help="a direct model's guesses are well-formed "
                        "expressions over each problem's primitives (the prefix-validity mask)")
    search = command_parser("evaluate.py search", "neural-guided search vs BasicSR")
    _common(search)
    search.add_argument("--problems", type=int, default=10, help="held-out generated problems (default 10)")
    search.add_argument("--no-named", action="store_true", help="leave out the named benchmark problems")
    search.add_argument("--generations", type=int, help="generations per run (default 50; no limit with "
                                                         "--budget-seconds)")
    search.add_argument("--budget-seconds", type=float, help="seconds per run, the same for both methods "
                        "(BasicSR then runs more generations); the neural runs' seconds count their shares of "
                        "the model calls")
    search.add_argument("--budget-evaluations", type=int, help="fitness evaluations per run, the same for both "
                        "methods (distinct expressions scored; a guided run's screened samples count)")
    search.add_argument("--problem-file", help="run on your own problems instead of the named and held-out ones: "
                        "a problems.json (id -> name, X, y) or the original's expressions file")
    search.add_argument("--population", type=int, default=20)
    search.add_argument("--seeds", type=int, default=1, help="runs per problem and method (default 1)")
    search.add_argument("--temperature", type=float, default=0.8)
    search.add_argument("--max-new-tokens", type=int, default=64)
    search.add_argument("--proposals", type=int, help="slots the model fills per generation, the rest are "
                        "evolved (default: all population - 1, the original's way)")
    search.add_argument("--distinct", action="store_true", help="a proposal already in the population or the "
                        "batch falls back to an evolved child")
    search.add_argument("--constrained", action="store_true", help="sample only well-formed expressions over "
                        "each problem's variables, operators and constants (a prefix-validity mask per token; "
                        "proposals and direct guesses)")
    search.add_argument("--init", choices=("random", "direct"), default="random", help="direct: --checkpoint is "
                        "a direct model; BasicSR also runs warm-started from its guesses, against the cold start")
    search.add_argument("--warm", type=int, default=5, help="with --init direct: the fittest distinct guesses "
                        "put in the first population (the rest BasicSR's own; default 5)")
    search.add_argument("--init-samples", type=int, default=16, help="with --init direct: guesses sampled per "
                        "problem and seed (default 16)")
    search.add_argument("--guide", help="with --init direct: a one-step model; guided search then runs too, "
                        "cold and warm")
    search.add_argument("--oversample", type=int, default=1, help="draw K x the slots and keep the fittest "
                        "distinct proposals (best-of-K, screened on the problem's points; default 1: off)")
    search.add_argument("--batch-runs", type=int, default=64, help="guided runs that advance together, one model "
                        "call for all of them (default 64; more on a GPU)")
    search.add_argument("--shard", type=shard, default=(0, 1), help="I/N: run every N-th (problem, seed) from "
                        "the I-th (a job array's task); `search merge` combines the parts")
    merge = command_parser("evaluate.py search merge", "combine the search.json of shards 0/N .. N-1/N",
                           config_file=False)
    merge.add_argument("shards", nargs="+", help="the shards' output directories (or search.json files)")
    merge.add_argument("--out", required=True, help="where the merged search.json and search.md go")
    commands.add_subcommand("report", report, help="metrics, findings and samples on a data file (the default)")
    commands.add_subcommand("search", search, help="neural-guided search vs BasicSR (`search merge DIRS...`: "
                            "combine shards)")
    commands.add_subcommand("merge", merge, help="the same as `search merge`")
    return parser


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _load(args: Namespace) -> tuple[Any, Any, dict[str, Any]]:
    import torch

    from sr_lightning.evaluation.checkpoints import load_for_evaluation, newest_run

    if args.threads:
        torch.set_num_threads(args.threads)

    model, task, info = load_for_evaluation(args.checkpoint or newest_run(args.runs), args.tokenizer,
                                            _device(args.device))
    where = f"step {info['step']}" if info["step"] is not None else "an HF directory"
    print(f"evaluating {info['checkpoint']} ({where})", file=sys.stderr)
    if info["best_step"] is not None:
        note = "the best" if info["step"] == info["best_step"] else "NOT the best"
        print(f"  {note}: lowest val/loss at step {info['best_step']} ({info['best_how']}); the run went "
              f"{info['steps_past_best']} steps past it, to step {info['last_step']}", file=sys.stderr)
    return model, task, info


def _out(args: Namespace, info: dict[str, Any], name: str) -> Path:
    if args.out:
        return Path(args.out)
    return Path(info["run_dir"]) / name if info.get("run_dir") else Path(name)


def _limit(args: Namespace, info: dict[str, Any], files: list[Path]) -> int | None:
    """Lines to evaluate: ``--limit`` (0: all), else on the run's own validation files the lines it validated on."""
    from sr_lightning.evaluation.checkpoints import validated_lines

    if args.limit is not None:
        limit, why = args.limit or None, "as --limit says"
    elif args.data:
        limit, why = None, "all of --data"
    else:
        limit, why = validated_lines(info, files)
    shown = "every line" if limit is None else f"the first {limit:,} lines"
    print(f"  data: {shown} of {', '.join(str(f) for f in files)}: {why}"
          + ("; --limit 0 evaluates all" if limit is not None and args.limit is None else ""), file=sys.stderr)
    return limit


def report(args: Namespace) -> None:
    from sr_lightning.data.points import ProblemIndex
    from sr_lightning.data.stream import resolve_files
    from sr_lightning.evaluation.checkpoints import points_file, run_files
    from sr_lightning.evaluation.report import EvalSettings, build_report, render_terminal

    model, task, info = _load(args)
    files = resolve_files(args.data or run_files(info))
    limit = _limit(args, info, files)
    settings = EvalSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=limit,
                            direct_samples=args.samples, direct_constrained=args.constrained)
    out = _out(args, info, "evaluation")
    problems = ProblemIndex(args.problems or points_file(info))  # as the run found them
    result = build_report(model, task, info, files, settings, problems, out)
    print(render_terminal(result))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'predictions.jsonl'}"
          + (f", {result['plot']}" if result["plot"] else ""))


def search(args: Namespace) -> None:
    from sr_lightning.evaluation import guided_search as gs
    from sr_lightning.evaluation.checkpoints import EvaluationInputError

    try:
        settings = gs.ComparisonSettings(generations=args.generations, budget_seconds=args.budget_seconds,
                                         budget_evaluations=args.budget_evaluations, oversample=args.oversample,
                                         problem_file=args.problem_file, init=args.init, warm=args.warm,
                                         init_samples=args.init_samples,
                                         population_size=args.population, seeds=args.seeds,
                                         held_out=args.problems, named=not args.no_named,
                                         temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                         proposals=args.proposals, distinct=args.distinct,
                                         constrained=args.constrained)
    except ValueError as error:  # the message starts with the setting's name
        raise EvaluationInputError(f"--{str(error).split()[0].replace('_', '-')}: {error}") from None
    if args.batch_runs < 1:
        raise EvaluationInputError(f"--batch-runs must be at least 1, got {args.batch_runs}")
    problems = gs.benchmark_problems(settings)  # a bad --problem-file fails before the model loads
    model, task, info = _load(args)
    direct = None
    if args.init == "direct":
        if task.mode != "direct":
            raise EvaluationInputError(f"--init direct: {info['checkpoint']} is a one-step model; give a direct "
                                       "one (trained with --data.mode direct) and the one-step model as --guide")
        direct, (model, task) = (model, task), _guide(args)
    elif args.guide:
        raise EvaluationInputError("--guide goes with --init direct (--checkpoint is then the direct model)")
    results = gs.compare(problems, settings, model, task, args.batch_runs, args.shard, direct)
    out = _out(args, info, "search" if args.shard == (0, 1) else f"search-shard{args.shard[0]}of{args.shard[1]}")
    _write_search(results, settings, info["checkpoint"], out, args.shard)


def _guide(args: Namespace) -> tuple[Any, Any]:
    """The one-step model of ``--guide`` (None, None without one)."""
    if not args.guide:
        return None, None
    from sr_lightning.evaluation.checkpoints import EvaluationInputError, load_for_evaluation

    model, task, info = load_for_evaluation(args.guide, args.tokenizer, _device(args.device))
    if task.mode != "onestep":
        raise EvaluationInputError(f"--guide: {info['checkpoint']} is a direct model, not a one-step one")
    return model, task


def merge(args: Namespace) -> None:
    from sr_lightning.evaluation import guided_search as gs

    results, settings, checkpoint = gs.merge([Path(s) for s in args.shards])
    _write_search(results, settings, checkpoint, Path(args.out))


def _write_search(results, settings, checkpoint: str, out: Path, shard: tuple[int, int] = (0, 1)) -> None:
    from sr_lightning.evaluation import guided_search as gs

    summary = gs.summarize(results)
    gs.write_results(summary, results, settings, checkpoint, out, shard)
    print("\n".join(gs.summary_table(summary)))
    print("runs solved by " + ", ".join(f"{who}: {n}" for who, n in gs.solved_pairs(results).items()))
    print(f"wrote {out / 'search.json'}, {out / 'search.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; missing or unreadable inputs print one ``error:`` line and return 2."""
    from sr_lightning.data.points import PointsFileError
    from sr_lightning.evaluation.checkpoints import EvaluationInputError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["search", "merge"]:
        argv = argv[1:]
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "report")
    args = build_parser().parse_args(argv)
    try:
        {"report": report, "search": search, "merge": merge}[args.command](args[args.command])
    except (EvaluationInputError, PointsFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
