"""Online training data: fresh random problems and BasicSR traces generated inside the workers.

A `BatchStream`, like `OneStepBatches`: the same batch dicts, so the LightningModule and the
DataModule's position tracking work unchanged; the stream's whole state is (epoch, start batch).

Problem identity. Problem ``index`` is ``random_problem(generated_id(index), online_problem_seed(base,
index, attempt))``; training uses even indices only and the held-out set odd ones, so the two
share neither an expression id nor a seed (bit 0 of the seed is bit 0 of the index), whatever
their base seeds. ``attempt`` counts redraws of problems that compute a named benchmark's
function (``exclude_named``), so the benchmarks stay unseen even up to rewriting.

Batch plan. A problem's search is costly (~0.15 s for 50 generations of 20), so each problem
feeds ``G = batches_per_problem`` batches, ``examples_per_problem`` examples to each; the batches
that share problems form a *family* and lie ``S = reuse_stride`` apart in the rank's sequence
(batch ``j = c*S*G + q*S + lane`` is member ``q`` of family ``c*S + lane``), so consecutive
batches never share a problem. Family ``f`` of rank ``r`` in epoch ``e`` has the global number
``M = (e * F + f) * W + r`` (``F`` families per rank and epoch, ``W`` ranks) and owns the training
problems ``M*G*B .. (M+1)*G*B - 1`` (``B`` = batch size; a family never needs more, each problem
gives at least one example). It takes them in order, sampling up to ``G * examples_per_problem``
records of each trace with a ``(seed, M)`` generator, until it holds ``G * B``; member ``q`` gets
every ``G``-th of them from the ``q``-th on. No problem is used by two families, on any rank,
worker or epoch. Batch ``j`` is built by worker ``(j - start) % num_workers``, as in
`OneStepBatches`, so the order never depends on the worker count and resuming is exact; a worker
keeps the families it has built, so each search runs once when ``num_workers`` divides ``S``.
Resuming needs the same world size and settings (they define ``M``), as file sharding does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader

from ..commands import comma_list, command_parser
from ..sr.expression import parse, predict
from ..sr.problems import Problem, ProblemConfig, ProblemsWriter, generated_id, named_problems, random_problem
from ..sr.search import SearchConfig
from ..task import OneStepTask
from .dataset import BatchStream, StreamSettings
from .format import dump_record, pair_from_record
from .generate import TARGETS, problem_records
from .points import SIDECAR, ProblemIndex
from .stream import LineReport
from .tokenizer import SRTokenizer

HELDOUT_FILE = "val.jsonl"
MAX_ATTEMPTS = 1 << 16  # redraws of a problem index; the seed layout reserves 16 bits for them
_INDEX_BITS = 64


@dataclass(frozen=True)
class OnlineSettings:
    """What the online workers generate (problems, searches, sampling) and the held-out set."""

    problems_per_epoch: int = 20_000
    """Searches per epoch, all ranks together (nominal): sets the batches per rank, ``ceil(
    problems_per_epoch * batches_per_problem / (world_size * ceil(batch_size / examples_per_problem)))``."""
    examples_per_problem: int = 16
    """Examples one batch takes from one problem's trace (a 50-generation run has ~980 with
    ``all``): fewer means more problems per batch (more diverse), more means cheaper examples."""
    batches_per_problem: int = 4
    """Batches that share one problem's trace (``G``): a search then feeds ``G *
    examples_per_problem`` examples, spread over batches ``reuse_stride`` apart."""
    reuse_stride: int = 16
    """Distance (``S``) between batches that share problems; a worker runs each search once
    only when ``num_workers`` divides it (otherwise still correct, just slower)."""
    targets: str = "all"
    """``all`` members of generation g+1 are targets, only the ``ancestors`` of the run's best, or
    ``new-ancestors``: those ancestors that generation g does not already hold."""
    min_vars: int = 1
    """Fewest variables of a random problem."""
    max_vars: int = 10
    """Most variables of a random problem."""
    binary_ops: tuple[str, ...] = ("*", "+", "-")
    """Binary operators of the targets and of the search."""
    unary_ops: tuple[str, ...] = ()
    """Unary operators of the targets and of the search (e.g. sin, cos)."""
    constants: tuple[float, ...] = (1.0,)
    """Constants of the targets and of the search."""
    target_max_depth: int = 4
    """Complexity of a random target expression: depth limit ..."""
    target_max_size: int = 15
    """... and node limit."""
    population_size: int = 20
    """BasicSR individuals per generation."""
    generations: int = 50
    """BasicSR generations per run (a run gives generations - 1 steps)."""
    max_size: int = 25
    """BasicSR node limit of a child."""
    exclude_named: bool = True
    """Redraw training problems that compute a named benchmark's function on its points."""
    heldout_problems: int = 200
    """Random problems in the held-out validation set (the named benchmarks come on top)."""
    heldout_seed: int = 1
    """Base seed of the held-out problems (held out by index parity whatever this is)."""

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if self.generations < 2:
            raise ValueError("generations must be at least 2 (a step needs two generations)")
        counts = (self.problems_per_epoch, self.examples_per_problem, self.batches_per_problem, self.reuse_stride)
        if min(counts) < 1:
            raise ValueError("problems_per_epoch, examples_per_problem, batches_per_problem and "
                             "reuse_stride must be positive")

    @classmethod
    def of(cls, value: OnlineSettings | Mapping[str, Any]) -> OnlineSettings:
        """Settings from themselves or from a config mapping (what LightningCLI stores in hparams)."""
        if isinstance(value, cls):
            return value
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})

    @property
    def problem(self) -> ProblemConfig:
        return ProblemConfig(min_vars=self.min_vars, max_vars=self.max_vars, binary_ops=self.binary_ops,
                             unary_ops=self.unary_ops, constants=self.constants,
                             max_depth=self.target_max_depth, max_size=self.target_max_size)

    @property
    def search(self) -> SearchConfig:
        return SearchConfig(population_size=self.population_size, generations=self.generations,
                            max_size=self.max_size, binary_ops=self.binary_ops, unary_ops=self.unary_ops,
                            constants=self.constants)

    def heldout_key(self) -> str:
        """Names the held-out set these settings make (changing one that shapes it never reuses a stale one)."""
        training_only = {"problems_per_epoch", "batches_per_problem", "reuse_stride"}
        shaping = {k: v for k, v in asdict(self).items() if k not in training_only}
        text = json.dumps(shaping, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------ problems


def online_problem_seed(base: int, index: int, attempt: int = 0) -> int:
    """An injective seed (distinct arguments, distinct ints): ``base | attempt | index`` bit fields."""
    if base < 0 or not 0 <= index < 1 << _INDEX_BITS or not 0 <= attempt < MAX_ATTEMPTS:
        raise ValueError(f"seed fields out of range: base {base}, index {index}, attempt {attempt}")
    return (base << (_INDEX_BITS + 16)) | (attempt << _INDEX_BITS) | index


def training_index(number: int) -> int:
    """Problem index of the ``number``-th training problem (even)."""
    return 2 * number


def heldout_index(number: int) -> int:
    """Problem index of the ``number``-th held-out problem (odd: never a training index)."""
    return 2 * number + 1


def computes_named(problem: Problem, named: Sequence[Problem]) -> bool:
    """Whether ``problem``'s expression equals a named benchmark's function on the benchmark's points."""
    tree = parse(problem.expression)
    return any(
        p.n_vars == problem.n_vars and np.allclose(predict(tree, p.X), p.y, rtol=1e-9, atol=1e-9)
        for p in named
    )


def draw_problem(index: int, base_seed: int, settings: OnlineSettings, named: Sequence[Problem] = ()) -> Problem:
    """Problem ``index``: its first draw that computes none of ``named`` (deterministic)."""
    for attempt in range(MAX_ATTEMPTS):
        problem = random_problem(generated_id(index), online_problem_seed(base_seed, index, attempt), settings.problem)
        if not computes_named(problem, named):
            return problem
    raise RuntimeError(f"problem {index}: every draw computes a named benchmark")


def trace_records(problem: Problem, settings: OnlineSettings, mode: str = "onestep") -> list[dict]:
    """Every one-step record of a BasicSR run on ``problem`` (the search is seeded by the problem), or its
    one direct record."""
    return problem_records(problem, settings.search, settings.targets, mode)


def sample_records(records: Sequence[dict], count: int, rng: np.random.Generator) -> list[dict]:
    """``count`` records (all if fewer) drawn without replacement, kept in trace order."""
    take = min(count, len(records))
    return [records[i] for i in sorted(rng.choice(len(records), size=take, replace=False))]


def record_source(record: dict) -> str:
    """Where an online example came from: ``online:<expression_id>:g<generation>:t<target index>`` (a direct
    example: ``online:<expression_id>``)."""
    meta = record["metadata"]
    if "generation" not in meta:
        return f"online:{record['expression_id']}"
    return f"online:{record['expression_id']}:g{meta['generation']}:t{meta['target_index']}"


# ------------------------------------------------------------------------------ training stream


class OnlineBatches(BatchStream):
    """Padded batches of one-step examples from problems generated on the fly (module docstring)."""

    def __init__(self, task: OneStepTask, settings: StreamSettings, online: OnlineSettings,
                 rank: int = 0, world_size: int = 1):
        super().__init__(task, settings, rank, world_size)
        self.online = online
        self.family_problems: dict[int, dict[int, Problem]] = {}  # the points of the families in use
        self.named = list(named_problems().values()) if online.exclude_named else []

    @property
    def problems_per_batch(self) -> int:
        per_problem = 1 if self.task.mode == "direct" else self.online.examples_per_problem
        return -(-self.settings.batch_size // per_problem)

    def __len__(self) -> int:
        """Batches per rank and epoch (the same on every rank)."""
        o = self.online
        fed = 1 if self.task.mode == "direct" else o.batches_per_problem  # batches one problem's examples reach
        return max(1, -(-o.problems_per_epoch * fed // (self.world_size * self.problems_per_batch)))

    def family_of(self, epoch: int, index: int) -> tuple[int, int]:
        """``(M, q)``: the global family number of batch ``index`` of ``epoch`` and its member number."""
        stride, group = self.online.reuse_stride, self.online.batches_per_problem
        chunk, rest = divmod(index, stride * group)
        member, lane = divmod(rest, stride)
        families = -(-len(self) // (stride * group)) * stride  # F, per rank and epoch
        return ((epoch * families + chunk * stride + lane) * self.world_size + self.rank), member

    def family_records(self, family: int) -> list[list[dict]]:
        """The records of the ``G`` batches of global family ``family`` (see the module docstring)."""
        group, size = self.online.batches_per_problem, self.settings.batch_size
        wanted = group * size
        rng = np.random.default_rng([self.settings.seed, family])
        pool: list[dict] = []
        problems = self.family_problems.setdefault(family, {})
        for number in range(family * wanted, (family + 1) * wanted):
            problem = draw_problem(training_index(number), self.settings.seed, self.online, self.named)
            problems[problem.expression_id] = problem
            share = min(group * self.online.examples_per_problem, wanted - len(pool))
            pool += sample_records(trace_records(problem, self.online, self.task.mode), share, rng)
            if len(pool) == wanted:
                break
        return [pool[member::group] for member in range(group)]

    def batch_records(self, epoch: int, index: int, cache: OrderedDict | None = None) -> list[dict]:
        """The records of batch ``index`` of ``epoch``; ``cache`` keeps recent families (by ``M``)."""
        family, member = self.family_of(epoch, index)
        cache = OrderedDict() if cache is None else cache
        if family not in cache:
            cache[family] = self.family_records(family)
            if len(cache) > self.online.reuse_stride:
                evicted, _ = cache.popitem(last=False)
                self.family_problems.pop(evicted, None)
        cache.move_to_end(family)
        return cache[family][member]

    def _make_batch(self, records: list[dict], report: LineReport, family: int | None = None) -> dict:
        problems = ProblemIndex.of(self.family_problems.get(family, {})) if self.task.reads_points else None
        return self._collate([pair_from_record(r, record_source(r)) for r in records], report, problems)

    def _worker_batches(self, worker: int, workers: int, report: LineReport) -> Iterator[tuple[int, dict]]:
        cache: OrderedDict = OrderedDict()
        for index in range(self.start + worker, len(self), workers):
            records = self.batch_records(self.epoch, index, cache)
            yield index, self._make_batch(records, report, self.family_of(self.epoch, index)[0])


# ------------------------------------------------------------------------------ held-out set


def heldout_problems(settings: OnlineSettings) -> list[Problem]:
    """The fixed validation problems: ``heldout_problems`` odd-index draws, then the named benchmarks."""
    named = list(named_problems().values())
    drawn = [draw_problem(heldout_index(n), settings.heldout_seed, settings, named if settings.exclude_named else ())
             for n in range(settings.heldout_problems)]
    return drawn + named


def write_heldout_set(out_dir: str | Path, settings: OnlineSettings, mode: str = "onestep") -> dict:
    """Write ``val.jsonl`` (``examples_per_problem`` records per held-out problem; direct: its one record),
    ``problems.json`` and ``manifest.json`` into ``out_dir``; returns the manifest. Deterministic for the
    settings."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = heldout_problems(settings)
    examples = 0
    with open(out / HELDOUT_FILE, "w", encoding="utf-8") as lines, ProblemsWriter(out / SIDECAR) as sidecar:
        for problem in problems:
            rng = np.random.default_rng([settings.heldout_seed, problem.expression_id])
            records = sample_records(trace_records(problem, settings, mode), settings.examples_per_problem, rng)
            lines.writelines(dump_record(r) + "\n" for r in records)
            sidecar.add(problem)
            examples += len(records)
    manifest = {"key": settings.heldout_key(), "mode": mode, "settings": asdict(settings), "problems": len(problems),
                "named": len(problems) - settings.heldout_problems, "examples": examples}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# ------------------------------------------------------------------------------ benchmark CLI


def _add_setting(parser: ArgumentParser, name: str, default: object) -> None:
    """One ``--flag`` per `OnlineSettings` field, typed by its default (tuples as comma lists)."""
    flag = f"--{name.replace('_', '-')}"
    if isinstance(default, bool):
        parser.add_argument(flag, dest=name, default=default, action=argparse.BooleanOptionalAction)
    elif isinstance(default, tuple):
        item = type(default[0]) if default else str
        parser.add_argument(flag, dest=name, default=",".join(map(str, default)), type=comma_list(item))
    else:
        parser.add_argument(flag, dest=name, default=default, type=type(default))


def build_parser() -> ArgumentParser:
    p = command_parser(prog="python -m sr_lightning.data.online",
                       description="Measure online examples/s, or write the held-out set.")
    p.add_argument("--bench", action="store_true", help="measure examples/s (one process, then --workers)")
    p.add_argument("--heldout", metavar="DIR", help="write the held-out validation set into DIR")
    p.add_argument("--mode", choices=("onestep", "direct"), default="onestep", help="the examples of the held-out "
                   "set: one-step records of each problem's search, or each problem's direct record")
    p.add_argument("--chunks", type=int, default=1, help="reuse_stride * batches_per_problem batches each")
    p.add_argument("--workers", type=int, default=0, help="also measure a DataLoader with this many workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--seed", type=int, default=42)
    for f in fields(OnlineSettings):
        _add_setting(p, f.name, f.default)
    return p


def _loader_rate(dataset: OnlineBatches, batches: int, workers: int) -> float:
    """Examples/s of a DataLoader with ``workers`` workers over ``batches`` batches (start-up included)."""
    started = time.perf_counter()
    examples = sum(b["n_examples"] for b in islice(DataLoader(dataset, batch_size=None, num_workers=workers), batches))
    return examples / (time.perf_counter() - started)


def bench(settings: OnlineSettings, task: OneStepTask, stream: StreamSettings, chunks: int, workers: int) -> dict:
    """Examples/s of one process (searching vs tokenizing) over whole chunks of ``S * G`` batches,
    also per CPU second (what an unshared core would give), then of ``workers`` DataLoader workers."""
    dataset = OnlineBatches(task, stream, replace(settings, problems_per_epoch=10**9))
    batches = chunks * settings.reuse_stride * settings.batches_per_problem
    cache: OrderedDict = OrderedDict()
    report = LineReport()
    search = encode = 0.0
    examples = 0
    cpu = time.process_time()
    for index in range(batches):
        started = time.perf_counter()
        records = dataset.batch_records(0, index, cache)
        middle = time.perf_counter()
        examples += dataset._make_batch(records, report)["n_examples"]
        search, encode = search + middle - started, encode + time.perf_counter() - middle
    result = {"batches": batches, "examples": examples, "search_ms_per_example": 1000 * search / examples,
              "encode_ms_per_example": 1000 * encode / examples,
              "examples_per_s_one_process": examples / (search + encode),
              "examples_per_cpu_s": examples / (time.process_time() - cpu)}
    if workers:
        result[f"examples_per_s_{workers}_workers"] = _loader_rate(dataset, batches, workers)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = OnlineSettings(**{f.name: getattr(args, f.name) for f in fields(OnlineSettings)})
    if args.heldout:
        result = write_heldout_set(args.heldout, settings, args.mode)
    elif args.bench:
        task = OneStepTask(SRTokenizer.default(), args.max_length)
        result = bench(settings, task, StreamSettings(batch_size=args.batch_size, seed=args.seed), args.chunks,
                       args.workers)
    else:
        parser.error("give --bench or --heldout DIR")
    print(json.dumps(result, indent=2), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
