"""One improvement loop: collect, mix, fine-tune, measure the payoff, repeat; resumable at every phase.

``OUT/loop.json`` holds the settings (a resumed loop must give the same ones; ``--iterations`` may
grow). ``OUT/iteration-0/payoff`` measures the start model; iteration i >= 1 keeps:

- ``data/``: ``improvement.jsonl`` (this iteration's examples) and ``problems.json`` (its problems'
  points), then ``collect.json`` (counts), written last: the phase's mark of completion;
- ``fine-tune-data/``: the shuffled mix it trained on (`mixing`) and ``mix.json``;
- ``run/``: the Lightning run (TensorBoard events, ``checkpoints/last.ckpt``, the tokenizer) and
  ``finished.json``; a run without it was killed and starts again;
- ``payoff/``: ``search.json`` and ``search.md`` of guided search vs BasicSR (as ``evaluate.py search``);
- ``summary.json``: its line of ``OUT/summary.jsonl``.

The next iteration starts from ``run/checkpoints/last.ckpt``: the run validates once, at its end, on
the start model's validation data (imitation of BasicSR, a check that the format is not forgotten);
what the loop optimises is the payoff, measured by the search itself.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.format import dump_record
from ..data.generate import TARGETS
from ..data.points import SIDECAR
from ..data.stream import resolve_files
from ..evaluation import guided_search as gs
from ..evaluation.checkpoints import EvaluationInputError, load_for_evaluation, points_file, run_files
from ..evaluation.lockstep import run_lockstep
from ..sr.problems import save_problems
from .labels import check_training_only, records_of_runs, training_problems
from .mixing import TRAIN_FILE, write_mix

LOOPS = ("dagger", "expert-iteration")


@dataclass(frozen=True)
class LoopSettings:
    """What a loop does; all of it is kept in ``loop.json`` and must match on resume."""

    loop: str = "dagger"
    """``dagger`` (the expert's labels on the model's own states) or ``expert-iteration`` (the search's successes)."""
    checkpoint: str = ""
    """The start model (a .ckpt or a run directory: its best checkpoint)."""
    problems: int = 64
    """Training problems per iteration (new ones each iteration)."""
    seeds: int = 1
    """Guided runs per training problem."""
    labels: str = "ancestors"
    """DAgger: ``all`` of the expert's step, or its ``ancestors`` / ``new-ancestors`` of the best it reaches."""
    expert_generations: int = 10
    """DAgger, ancestor labels: generations the expert runs to find its best."""
    imitation_data: tuple[str, ...] = ()
    """Files of imitation lines to mix in (default: the start model's training data)."""
    imitation_ratio: float = 1.0
    """Imitation lines per improvement line in each fine-tune."""
    steps: int = 300
    """Optimizer steps per fine-tune."""
    batch_size: int = 16
    learning_rate: float = 5e-4
    warmup_steps: int = 20
    val_batches: int = 16
    """Validation batches (of 32) at the end of each fine-tune."""
    precision: str = "32-true"
    search: gs.ComparisonSettings = gs.ComparisonSettings(generations=20, seeds=3, held_out=100, proposals=5,
                                                          distinct=True)
    """Guided search: the collection's runs use its budget and proposals; the payoff is this comparison."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {self.loop!r}")
        if self.labels not in TARGETS:
            raise ValueError(f"labels must be one of {', '.join(TARGETS)}, got {self.labels!r}")
        if self.problems < 1 or self.steps < 1:
            raise ValueError(f"problems and steps must be at least 1, got {self.problems} and {self.steps}")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def settled(out: Path, settings: LoopSettings) -> LoopSettings:
    """The loop's settings: a new loop writes them, a resumed one must give the same."""
    saved = _json(out / "loop.json")
    if saved is None:
        _write_json(out / "loop.json", asdict(settings))
        return settings
    differ = [k for k, v in asdict(settings).items() if saved.get(k) != json.loads(json.dumps(v))]
    if differ:
        raise EvaluationInputError(f"{out / 'loop.json'}: this loop was started with other {', '.join(differ)}; "
                                   "resume it with the same options or give another --out")
    return settings


class Loop:
    """Runs iterations 0 .. N of one loop in ``out`` (see the module docstring)."""

    def __init__(self, out: Path, settings: LoopSettings, device: str = "cpu", batch_runs: int = 64,
                 accelerator: str = "auto") -> None:
        self.out, self.device, self.batch_runs, self.accelerator = out, device, batch_runs, accelerator
        self.settings = settled(out, settings)
        model, task, self.start_info = load_for_evaluation(settings.checkpoint, device=device)
        self._loaded = (self.start_info["checkpoint"], model, task)  # the last model loaded, kept for reuse

    def folder(self, iteration: int) -> Path:
        return self.out / f"iteration-{iteration}"

    def checkpoint(self, iteration: int) -> str:
        """The model after ``iteration`` (0: the start model)."""
        if iteration == 0:
            return self.start_info["checkpoint"]
        return str(self.folder(iteration) / "run" / "checkpoints" / "last.ckpt")

    def run(self, iterations: int) -> list[dict[str, Any]]:
        for iteration in range(iterations + 1):
            if _json(self.folder(iteration) / "summary.json") is None:
                self.iterate(iteration)
        return self.summary(iterations)

    def iterate(self, iteration: int) -> None:
        start = time.perf_counter()
        line: dict[str, Any] = {"iteration": iteration, "loop": self.settings.loop}
        if iteration > 0:
            line["collect"] = self.collect(iteration)
            line["mix"] = self.mix(iteration)
            line["fine_tune"] = self.fine_tune(iteration)
        line["payoff"] = self.payoff(iteration)
        line["seconds"] = round(time.perf_counter() - start, 1)
        _write_json(self.folder(iteration) / "summary.json", line)
        print(summary_line(line), file=sys.stderr)

    def summary(self, iterations: int) -> list[dict[str, Any]]:
        lines = [_json(self.folder(i) / "summary.json") for i in range(iterations + 1)]
        (self.out / "summary.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        return lines

    # -- phases ---------------------------------------------------------------------------------------------------
    def _model(self, iteration: int):
        """The model after ``iteration``; the payoff of one iteration and the collection of the next share it."""
        path = self.checkpoint(iteration)
        if self._loaded[0] != path:
            model, task, _ = load_for_evaluation(path, device=self.device)
            self._loaded = (path, model, task)
        return self._loaded[1:]

    def collect(self, iteration: int) -> dict[str, Any]:
        """Guided runs of the previous model on new training problems, and their improvement examples."""
        data = self.folder(iteration) / "data"
        if (done := _json(data / "collect.json")) is not None:
            return done
        s = self.settings
        start = time.perf_counter()
        problems = training_problems(s.problems, iteration, s.seed)
        model, task = self._model(iteration - 1)
        runs = gs.shard_runs(problems, s.seeds)
        guided = run_lockstep([gs.guided_run(p, seed, s.search, model, task) for p, seed in runs], self.batch_runs)
        finished = [(p, seed, run.trace) for (p, seed), run in zip(runs, guided)]
        records = records_of_runs(s.loop, finished, s.labels, s.expert_generations)
        check_training_only(problems, records)
        data.mkdir(parents=True, exist_ok=True)
        (data / "improvement.jsonl").write_text("".join(dump_record(r) + "\n" for r in records), encoding="utf-8")
        save_problems(data / SIDECAR, problems)
        counts = {"runs": len(runs), "solved": sum(t.best_mse <= gs.SOLVED_MSE for _, _, t in finished),
                  "states": sum(len(t.generations) for _, _, t in finished), "examples": len(records),
                  "seconds": round(time.perf_counter() - start, 1)}
        _write_json(data / "collect.json", counts)
        return counts

    def mix(self, iteration: int) -> dict[str, Any]:
        """This and every earlier iteration's examples, with imitation lines, into the fine-tune's file."""
        out = self.folder(iteration) / "fine-tune-data"
        if (done := _json(out / "mix.json")) is not None:
            return done
        s = self.settings
        improvement, problems = [], {}
        for i in range(1, iteration + 1):
            data = self.folder(i) / "data"
            improvement += (data / "improvement.jsonl").read_text(encoding="utf-8").splitlines()
            problems.update({p.expression_id: p for p in training_problems(s.problems, i, s.seed)})
        files = resolve_files(list(s.imitation_data) or run_files(self.start_info, "train", "pass --imitation-data"))
        return write_mix(out, improvement, problems, files, s.imitation_ratio, seed=s.seed * 1000 + iteration,
                         points_file=points_file(self.start_info))

    def fine_tune(self, iteration: int) -> dict[str, Any]:
        """The previous model trained on the mix with the Lightning Trainer; a killed run starts again."""
        run_dir = self.folder(iteration) / "run"
        if (done := _json(run_dir / "finished.json")) is not None:
            return done
        shutil.rmtree(run_dir, ignore_errors=True)
        from .fine_tune import fine_tune

        s = self.settings
        start = time.perf_counter()
        val_loss = fine_tune(self.checkpoint(iteration - 1), self.folder(iteration) / "fine-tune-data" / TRAIN_FILE,
                             run_files(self.start_info, "val"), run_dir, s, self.accelerator)
        result = {"steps": s.steps, "val_loss": val_loss, "checkpoint": self.checkpoint(iteration),
                  "seconds": round(time.perf_counter() - start, 1)}
        _write_json(run_dir / "finished.json", result)
        return result

    def payoff(self, iteration: int) -> dict[str, Any]:
        """Guided search with this iteration's model vs BasicSR on the named and held-out problems."""
        out = self.folder(iteration) / "payoff"
        done = _json(out / "search.json") if (out / "search.md").is_file() else None  # .md is written last
        if done is None:
            settings = self.settings.search
            model, task = self._model(iteration)
            results = gs.compare(gs.benchmark_problems(settings), settings, model, task, self.batch_runs)
            gs.write_results(gs.summarize(results), results, settings, self.checkpoint(iteration), out)
            done = _json(out / "search.json")
        return {**done["summary"], "solved_pairs": done["solved_pairs"]}


def summary_line(line: dict[str, Any]) -> str:
    """One line a person reads: what the iteration collected, how training went, what the search gained."""
    neural, basic = line["payoff"]["neural"], line["payoff"]["basic"]
    parts = [f"{line['loop']} iteration {line['iteration']}:"]
    if "collect" in line:
        c, f = line["collect"], line["fine_tune"]
        parts.append(f"{c['examples']} examples from {c['states']} states of {c['runs']} runs "
                     f"({c['solved']} solved); fine-tune {f['steps']} steps, val/loss {f['val_loss']:.4f};")
    parts.append(f"guided solved {neural['solved']}/{neural['runs']} {neural['solved_by_seed']} vs BasicSR "
                 f"{basic['solved']} {basic['solved_by_seed']}; R^2>=0.99 {neural['r2_rate']:.3f} vs "
                 f"{basic['r2_rate']:.3f}; well-formed {neural['well_formed_rate'] or 0:.2f}, repeats "
                 f"{neural['repeat_rate'] or 0:.2f} ({line['seconds']:.0f} s)")
    return " ".join(parts)
