"""``python -m sr_lightning.evaluation.search_bench --checkpoint RUN``: guided-search speed, before and after.

The same runs (problems x seeds, one budget of generations) in one process, four ways:

1. BasicSR alone: the time to beat;
2. guided, run by run, each generation's samples decoded as copies of the prompt (the path before
   shared prefill and lockstep);
3. guided, run by run, one prefill per generation shared by its samples (``--batch-runs 1``);
4. guided, ``--batch-runs`` runs in lockstep, one model call per round (what ``evaluate.py search`` does).

Prints search seconds, proposals per second and the ratios against path 2 and against BasicSR.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from ..commands import command_parser
from ..decoding import generate
from ..markdown import table
from ..model import GPTNeo
from ..sr.problems import Problem
from ..sr.search import BasicSR, RunClock
from ..task import OneStepTask
from .checkpoints import EvaluationInputError, load_for_evaluation, newest_run
from .guided_search import ComparisonSettings, benchmark_problems, guided_run, proposer_for, search_for, shard_runs
from .lockstep import run_lockstep
from .proposals import NeuralProposer


class CopiedPrompts:
    """The proposal step as it was: one run alone, its prompt copied once per sample and each copy prefilled
    (always unconstrained)."""

    def __init__(self, proposer: NeuralProposer) -> None:
        self.proposer = proposer

    def __call__(self, generation: int, expressions: list[str], fitnesses: list[float]) -> list[str | None]:
        p = self.proposer
        if p.count == 0:
            return []
        prompt = p.prompt_ids(generation, expressions, fitnesses)
        outputs = generate(p.model, [prompt] * p.count, eos_id=p.tokenizer.eos_id, pad_id=p.tokenizer.pad_id,
                           max_new_tokens=p.max_new_tokens, temperature=p.temperature, generator=p.generator,
                           prefixes=None if p.prefix is None else p.prefix.expand(p.count, -1, -1))
        return p.proposals(outputs, expressions)


def _figures(name: str, clocks: Sequence[RunClock], traces: Sequence[Any]) -> dict[str, Any]:
    seconds = sum(c.seconds for c in clocks)
    proposals = sum(t.proposals_total for t in traces)
    return {"path": name, "seconds": seconds, "generations": sum(len(t.generations) for t in traces),
            "solved": sum(t.generations_to_solve() is not None for t in traces), "proposals": proposals,
            "proposals_per_s": proposals / seconds if proposals else None}


def _one_by_one(name: str, runs: Sequence[tuple[Problem, int]], settings: ComparisonSettings,
                proposer=None) -> dict[str, Any]:
    clocks, traces = [], []
    for problem, seed in runs:
        clocks.append(RunClock())
        search = search_for(problem, seed, settings)
        traces.append(search.run(None if proposer is None else proposer(problem, seed, search), clocks[-1]))
    return _figures(name, clocks, traces)


def _lockstep(name: str, runs: Sequence[tuple[Problem, int]], settings: ComparisonSettings, model: GPTNeo,
              task: OneStepTask, batch_runs: int) -> dict[str, Any]:
    done = run_lockstep([guided_run(p, s, settings, model, task) for p, s in runs], batch_runs, progress=False)
    return _figures(name, [run.clock for run in done], [run.trace for run in done])


def benchmark(model: GPTNeo, task: OneStepTask, settings: ComparisonSettings, batch_runs: int) -> list[dict]:
    """The four paths' figures on the same runs (see the module docstring)."""
    runs = shard_runs(benchmark_problems(settings), settings.seeds)

    def shared(problem: Problem, seed: int, search: BasicSR) -> NeuralProposer:
        return proposer_for(problem, seed, settings, model, task, search)

    _lockstep("warm-up", runs[:2], settings, model, task, 2)
    rows = [_one_by_one("BasicSR alone", runs, settings),
            _one_by_one("guided, run by run, prompt copied per sample (before)", runs, settings,
                        lambda problem, seed, search: CopiedPrompts(shared(problem, seed, search))),
            _one_by_one("guided, run by run, shared prefill", runs, settings, shared),
            _lockstep(f"guided, {batch_runs} runs in lockstep, shared prefill (now)", runs, settings, model, task,
                      batch_runs)]
    before, basic = rows[1], rows[0]
    for row in rows:
        row["proposals_per_s_vs_before"] = (row["proposals_per_s"] / before["proposals_per_s"]
                                            if row["proposals_per_s"] else None)
        row["seconds_vs_basic"] = row["seconds"] / basic["seconds"]
    return rows


def render(rows: list[dict], settings: ComparisonSettings, runs: int, device: str) -> str:
    head = (f"{runs} runs ({settings.held_out} held-out + {'8 named' if settings.named else 'no named'} problems x "
            f"{settings.seeds} seed(s)), {settings.budget_text()}, populations of {settings.population_size}, "
            f"{settings.proposal_count} proposals per generation{' (distinct)' if settings.distinct else ''}"
            f"{', constrained (shared-prefill paths)' if settings.constrained else ''}; "
            f"{device}, {torch.get_num_threads()} threads")
    columns = ("path", "seconds", "generations", "solved", "proposals", "proposals_per_s",
               "proposals_per_s_vs_before", "seconds_vs_basic")
    return "\n".join([head, *table(columns, [[row[c] for c in columns] for row in rows], spec=".3g")])


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(prog="python -m sr_lightning.evaluation.search_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a .ckpt, a run directory or an HF directory (default: newest run)")
    parser.add_argument("--problems", type=int, default=20, help="held-out generated problems (default 20)")
    parser.add_argument("--no-named", action="store_true", help="leave out the 8 named problems")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--proposals", type=int, help="slots the model fills (default: all population - 1)")
    parser.add_argument("--distinct", action="store_true")
    parser.add_argument("--constrained", action="store_true", help="constrain the shared-prefill paths' samples")
    parser.add_argument("--batch-runs", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = ComparisonSettings(generations=args.generations, population_size=args.population,
                                      seeds=args.seeds, held_out=args.problems, named=not args.no_named,
                                      proposals=args.proposals, distinct=args.distinct,
                                      constrained=args.constrained)
        model, task, info = load_for_evaluation(args.checkpoint or newest_run(), device=args.device)
    except (EvaluationInputError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint {info['checkpoint']}")
    rows = benchmark(model, task, settings, args.batch_runs)
    print(render(rows, settings, len(shard_runs(benchmark_problems(settings), settings.seeds)), args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
