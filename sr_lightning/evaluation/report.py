"""The evaluation report: teacher-forced metrics, greedy predictions, and plain-language findings.

Every symptom of the original's failure has a number here, and a sentence when it is bad:
first-token accuracy beside the majority baseline (61.8% vs 77.8% went unnoticed), the
first-token distribution of predictions vs data (it was inverted), and how often predictions
are degenerate leaves, copies of the population, or all the same. Losses come from the same
encoding, collation and metric classes as training, so ``val_loss`` here is training's
``val/loss`` on the same file.

Examples are processed in chunks: memory stays flat however long the file is.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from ..data.batches import Encoded
from ..data.format import POPULATION, Pair, population_items
from ..data.points import ProblemIndex
from ..data.stream import LineReport, count_lines, iter_raw_lines, parse_lines
from ..decoding import generate
from ..markdown import code_cell, number
from ..metrics import FirstTokenCounts, OneStepMetrics, TokenHistogram
from ..model import GPTNeo
from ..sr.expression import ExpressionError, Expr, fitness, parse
from ..sr.primitives import Primitives
from ..task import OneStepTask
from ..teacher_forcing import teacher_forced
from ..sr.problems import Problem
from . import direct
from .checkpoints import EvaluationInputError
from .curves import plot_validation_curves

DEGENERATE_LIMIT = 0.2  # a higher share of lone-leaf predictions (for compound targets) is a finding
VALID_LIMIT = 0.9  # a lower share of parsable predictions is a finding
UNIQUE_LIMIT = 0.2  # fewer distinct predictions than this share of predictions: the model has collapsed
SAMPLES_SHOWN = 10
REPORT_NAMES = {  # `OneStepMetrics` name -> the report's key (the report's keys predate the collection)
    "loss": "val_loss", "nll_per_target": "nll_per_target", "first_token_acc": "first_token_accuracy",
    "token_acc": "token_accuracy", "first_token_majority": "first_token_majority_baseline",
}
RECORDED_TOLERANCE = 1e-3  # relative: val_loss further from the run's own val/loss than this is a finding
READING_GUIDE = """\
- `val_loss`: mean NLL per target token, as training's `val/loss`; `recorded_val_loss` is the value the run
  logged for this checkpoint. By default the report reads the same lines as the run's validation, so the two agree.
- `valid_rate`: predictions that parse as one expression AND use only the problem's own variables, operators
  and constants (as its context line names them); `14122` where the only constant is `1.0` is not valid.
- `median_fitness_gain`: the prediction's fitness (-MSE - 0.01 x size, on the problem's points) minus the best
  fitness in the population it read, over valid predictions; a median, because one exploding prediction
  would dominate a mean. `improved_rate`: the share of those predictions that beat the population's best.
- `copy_rate`: predictions that repeat a member of the population verbatim; `degenerate_rate`: a lone variable
  or constant where the target is compound; `unique_rate`: distinct predictions / predictions.
"""


@dataclass
class EvalSettings:
    """How the report is computed."""

    batch_size: int = 32  # examples per teacher-forced batch and per decoding batch
    max_new_tokens: int = 128  # decoding budget per prediction
    chunk_size: int = 512  # examples in memory at a time
    limit: int | None = None  # evaluate only the first N lines (as validation's limit_val_batches does)
    direct_samples: int = 16  # a direct model's sampled guesses per problem, besides the greedy one
    direct_constrained: bool = False  # a direct model's guesses are well-formed over the problem's primitives


# -- reading --------------------------------------------------------------------------------
def read_pairs(files: Sequence[Path], lines: LineReport, limit: int | None = None) -> Iterator[Pair]:
    """Every good line among the first ``limit`` lines of ``files`` as a `Pair`; others are counted in ``lines``."""
    return parse_lines(islice(iter_raw_lines(files, lines), limit), lines)


def population_of(pair: Pair) -> str:
    """The population text, also for the generic ``{"prompt": ...}`` form."""
    if pair.population is not None:
        return pair.population
    return (pair.prompt or "").partition(POPULATION)[2]


def _parsed(text: str) -> Expr | None:
    try:
        return parse(text)
    except ExpressionError:
        return None


# -- one prediction -------------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """What one greedy prediction is, judged against its example."""

    exact: bool  # prediction == target, character for character
    valid: bool  # parses as one expression over the problem's own variables, operators and constants
    copy: bool  # the prediction is verbatim one of the prompt's population members
    degenerate: bool  # a lone variable or constant while the target is not
    target_parses: bool
    fitness_gain: float | None  # fitness(prediction) - best printed fitness; None without X/y or when not valid


def score_prediction(pair: Pair, prediction: str, problem: Problem | None) -> Scored:
    predicted, target = _parsed(prediction), _parsed(pair.target)
    primitives = Primitives.from_context(pair.context)
    admitted = predicted is not None and (primitives is None or primitives.admits(predicted))
    items = population_items(population_of(pair))
    gain = None
    if admitted and problem is not None and items:
        gain = fitness(predicted, problem.X, problem.y) - max(float(f) for _, f in items)
    is_leaf = predicted is not None and predicted.size == 1
    target_leaf = target is not None and target.size == 1
    return Scored(exact=prediction == pair.target, valid=admitted,
                  copy=prediction in {e for e, _ in items}, degenerate=is_leaf and not target_leaf,
                  target_parses=target is not None, fitness_gain=gain)


# -- accumulation ---------------------------------------------------------------------------
class Evaluation:
    """Accumulates the report over chunks of pairs: `add` each chunk, then `results`."""

    def __init__(self, model: GPTNeo, task: OneStepTask, settings: EvalSettings,
                 problems: ProblemIndex | None = None, predictions: TextIO | None = None):
        self.model, self.task, self.settings = model, task, settings
        self.tokenizer = task.tokenizer
        self.problems = problems or ProblemIndex()
        self.predictions = predictions
        self.lines = LineReport()
        self.metrics = OneStepMetrics(model.config.vocab_size).to(self.device)
        self.first_tokens = FirstTokenCounts(model.config.vocab_size).to(self.device)
        self.counts: Counter = Counter()
        self.distinct: set[str] = set()
        self.gains: list[float] = []
        self.samples: list[dict[str, str]] = []

    @property
    def device(self) -> torch.device:
        return self.model.wte.weight.device

    def add(self, pairs: Sequence[Pair]) -> None:
        """Teacher-forced metrics and greedy predictions for one chunk."""
        kept = self.task.encode(pairs, self.lines, self.problems)
        pairs, encoded = [pair for pair, _ in kept], [example for _, example in kept]
        bs = self.settings.batch_size
        prefixes = [self._teacher_forced(encoded[start:start + bs]) for start in range(0, len(encoded), bs)]
        prompts = [self.task.prompt_ids(e) for e in encoded]
        outputs = generate(self.model, prompts, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                           max_new_tokens=self.settings.max_new_tokens, batch_size=bs,
                           prefixes=torch.cat(prefixes) if prefixes and prefixes[0] is not None else None)
        for pair, example, output in zip(pairs, encoded, outputs):
            self._score(pair, self.tokenizer.decode(output), example.truncated)

    @torch.inference_mode()
    def _teacher_forced(self, examples: Sequence[Encoded]) -> torch.Tensor | None:
        """Training's validation step (`teacher_forced` into `OneStepMetrics`) on one batch; returns the
        point prefix it computed (None for a model that reads no points), which decoding then reuses."""
        batch = self.task.collate(examples)
        out = teacher_forced(self.model, {**batch, "input_ids": batch["input_ids"].to(self.device)})
        self.metrics.update(out)
        self.first_tokens.update(out)
        return out.prefix

    def _score(self, pair: Pair, prediction: str, truncated: bool) -> None:
        scored = score_prediction(pair, prediction, self.problems.lookup(pair))
        self.counts.update(examples=1, exact=scored.exact, valid=scored.valid, copy=scored.copy,
                           degenerate=scored.degenerate, unparsable_targets=not scored.target_parses,
                           truncated=truncated)
        self.distinct.add(prediction)
        if scored.fitness_gain is not None:
            self.gains.append(scored.fitness_gain)
        row = {"source": pair.source, "target": pair.target, "prediction": prediction}
        if len(self.samples) < SAMPLES_SHOWN:
            self.samples.append(row)
        if self.predictions is not None:
            self.predictions.write(json.dumps({**row, "exact": scored.exact, "valid": scored.valid,
                                               "fitness_gain": scored.fitness_gain}) + "\n")

    def results(self) -> dict[str, Any]:
        """The report's numbers (rates in [0, 1]); raises when no example could be evaluated."""
        n = self.counts["examples"]
        if n == 0:
            raise EvaluationInputError(f"no usable example to evaluate ({self.lines.total} lines skipped: "
                                       f"{dict(self.lines.counts)})")
        out: dict[str, Any] = {"n_examples": n}
        out.update({REPORT_NAMES[name]: float(value) for name, value in self.metrics.compute().items()})
        out.update(exact_match=self.counts["exact"] / n, valid_rate=self.counts["valid"] / n,
                   copy_rate=self.counts["copy"] / n, unique_rate=len(self.distinct) / n,
                   degenerate_rate=self.counts["degenerate"] / n)
        out["first_token_distribution"] = {"predicted": self._shares(self.first_tokens.predicted),
                                           "target": self._shares(self.first_tokens.true)}
        out["median_fitness_gain"] = statistics.median(self.gains) if self.gains else None
        out["improved_rate"] = sum(g > 0 for g in self.gains) / len(self.gains) if self.gains else None
        out["fitness_gain_examples"] = len(self.gains)
        out["unparsable_targets"] = self.counts["unparsable_targets"]
        out["truncated_examples"] = self.counts["truncated"]
        out["skipped_lines"] = dict(self.lines.counts)
        return out

    def _shares(self, histogram: TokenHistogram) -> dict[str, float]:
        counts = histogram.compute()
        total = int(counts.sum())
        order = sorted((int(c), t) for t, c in enumerate(counts.tolist()) if c)
        return {self.tokenizer.first_token_label(t): c / total for c, t in reversed(order)}


def chunks(items: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def evaluate_files(model: GPTNeo, task: OneStepTask, files: Sequence[Path], settings: EvalSettings,
                   problems: ProblemIndex | None = None,
                   predictions: TextIO | None = None) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The report's numbers for ``files`` (the first ``settings.limit`` lines) and a few samples."""
    evaluation = Evaluation(model, task, settings, problems, predictions)
    total = sum(count_lines(f) for f in files)
    total = min(total, settings.limit) if settings.limit else total
    pairs = read_pairs(files, evaluation.lines, settings.limit)
    with tqdm(total=total, unit="example", desc="evaluating", disable=None) as progress:
        for chunk in chunks(pairs, settings.chunk_size):
            evaluation.add(chunk)
            progress.update(len(chunk))
    return evaluation.results(), evaluation.samples


# -- findings -------------------------------------------------------------------------------
def _mode(shares: dict[str, float]) -> tuple[str, float]:
    return max(shares.items(), key=lambda item: (item[1], item[0])) if shares else ("", 0.0)


def findings(report: dict[str, Any]) -> list[str]:
    """Plain-language warnings about the numbers of a report (empty when nothing looks wrong)."""
    out = []
    step, best = report.get("step"), report.get("best_step")
    if step is not None and best is not None and step != best:
        out.append(f"this is not the best checkpoint: step {step} is evaluated, but the lowest val/loss was "
                   f"at step {best}; evaluate the best one (run evaluate.py without --checkpoint)")
    accuracy, baseline = report["first_token_accuracy"], report["first_token_majority_baseline"]
    if accuracy < baseline:
        out.append(f"first-token accuracy {accuracy:.1%} is below the majority baseline {baseline:.1%}: "
                   f"always guessing the most common first token would do better")
    out.extend(_inversion(report["first_token_distribution"]))
    if report["degenerate_rate"] > DEGENERATE_LIMIT:
        out.append(f"{report['degenerate_rate']:.1%} of predictions are a lone variable or constant where the "
                   f"target is a compound expression (degenerate; limit {DEGENERATE_LIMIT:.0%})")
    if report["valid_rate"] < VALID_LIMIT:
        out.append(f"only {report['valid_rate']:.1%} of predictions are valid expressions of their problem "
                   f"(parse, and use only its variables, operators and constants)")
    if report["unique_rate"] < UNIQUE_LIMIT:
        out.append(f"predictions have collapsed: {report['unique_rate']:.1%} of them are distinct")
    if report.get("unparsable_targets"):
        out.append(f"{report['unparsable_targets']} targets in the data do not parse as an expression")
    recorded = report.get("recorded_val_loss")
    if recorded is not None and abs(report["val_loss"] - recorded) > RECORDED_TOLERANCE * abs(recorded):
        out.append(f"val_loss {report['val_loss']:.4f} is not the val/loss {recorded:.4f} the run recorded for this "
                   f"checkpoint: these are other examples than the ones it validated on")
    skipped = sum(report.get("skipped_lines", {}).values())
    if skipped:
        out.append(f"{skipped} data lines were skipped: {report['skipped_lines']}")
    return out


def _inversion(distribution: dict[str, dict[str, float]]) -> list[str]:
    """The model's favourite first token is not the data's: the diagnosis report's clearest symptom."""
    predicted, target = distribution["predicted"], distribution["target"]
    (p_token, p_share), (t_token, t_share) = _mode(predicted), _mode(target)
    if not predicted or not target or p_token == t_token:
        return []
    return [f"the predicted first-token distribution is inverted relative to the data: the model starts "
            f"{p_share:.1%} of predictions with {p_token!r} and only {predicted.get(t_token, 0.0):.1%} with "
            f"{t_token!r}, while {t_share:.1%} of targets start with {t_token!r}"]


# -- rendering ------------------------------------------------------------------------------
def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows shared by the terminal table and report.md."""
    past = report.get("steps_past_best")
    rows = [("checkpoint", str(report["checkpoint"])),
            ("step / best step", f"{number(report['step'])} / {number(report['best_step'])}"
                                 + (f" (the run went {past} steps past its best)" if past else ""))]
    keys = ("n_examples", "val_loss", "recorded_val_loss", "nll_per_target", "first_token_accuracy", "first_token_majority_baseline",
            "token_accuracy", "exact_match", "valid_rate", "copy_rate", "unique_rate", "degenerate_rate",
            "median_fitness_gain", "improved_rate", "unparsable_targets", "truncated_examples")
    return rows + [(key, number(report[key])) for key in keys]


def render_terminal(report: dict[str, Any]) -> str:
    rows = summary_rows(report)
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if "direct" in report:
        lines.append(f"direct: {direct_summary(report['direct'])}")
    lines += [f"WARNING: {text}" for text in report["findings"]] or ["no findings"]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], samples: Sequence[dict[str, str]]) -> str:
    lines = ["# Evaluation report", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary_rows(report)]
    lines += ["", "## Findings", ""]
    lines += [f"- {text}" for text in report["findings"]] or ["No findings."]
    lines += ["", "## How to read the numbers", "", READING_GUIDE.rstrip()]
    distribution = report["first_token_distribution"]
    lines += ["", "## First target token", "", "| token | predicted | target |", "|---|---|---|"]
    tokens = sorted(set(distribution["predicted"]) | set(distribution["target"]),
                    key=lambda t: -(distribution["predicted"].get(t, 0) + distribution["target"].get(t, 0)))
    lines += [f"| {code_cell(t)} | {distribution['predicted'].get(t, 0):.3f} | {distribution['target'].get(t, 0):.3f} |"
              for t in tokens[:15]]
    if report.get("plot"):
        lines += ["", "## Validation curves", "", f"![validation curves]({Path(report['plot']).name})"]
    lines += ["", "## Samples (greedy)", "", "| source | target | prediction |", "|---|---|---|"]
    lines += [f"| {s['source']} | {code_cell(s['target'])} | {code_cell(s['prediction'])} |" for s in samples]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], samples: Sequence[dict[str, str]], out: Path,
                 recoveries: Sequence[direct.Recovery] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report, samples)
    if recoveries is not None:
        markdown += "\n".join(["", "## Direct: the expression from the points", "", direct_summary(report["direct"]),
                                "", *direct.recovery_table(recoveries)]) + "\n"
    (out / "report.md").write_text(markdown)


def direct_summary(numbers: dict[str, Any]) -> str:
    """One sentence of a direct model's recovery numbers (terminal and report.md)."""
    if not numbers.get("problems"):
        return "no problems with points to judge"
    median = numbers["median_best_r2"]
    return (f"{numbers['problems']} problems, {numbers['guesses_per_problem']} guesses each (greedy + sampled): "
            f"greedy exact {numbers['greedy_exact_rate']:.1%}, any guess exact {numbers['exact_rate']:.1%}, "
            f"best R^2 >= 0.99 {numbers['r2_rate']:.1%} (constants refitted), median best R^2 "
            f"{'-' if median is None else f'{median:.4f}'}, valid guesses {numbers['valid_rate']:.1%}")


def build_report(model: GPTNeo, task: OneStepTask, info: dict[str, Any], files: Sequence[Path],
                 settings: EvalSettings, problems: ProblemIndex, out: Path) -> dict[str, Any]:
    """Evaluate, plot, judge and write ``report.json``, ``report.md``, ``predictions.jsonl`` and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as predictions:
        numbers, samples = evaluate_files(model, task, files, settings, problems, predictions)
    report: dict[str, Any] = {key: info.get(key) for key in ("checkpoint", "step", "recorded_val_loss", "best_step",
                                                          "last_step", "steps_past_best", "best_checkpoint")}
    report["data"] = [str(f) for f in files]
    report["line_limit"] = settings.limit
    report.update(numbers)
    plot = None
    if info.get("run_dir"):
        plot = plot_validation_curves(info["run_dir"], out / "validation_curves.png", info.get("best_step"))
    report["plot"] = None if plot is None else str(plot)
    recoveries = _direct(model, task, files, settings, problems) if task.mode == "direct" else None
    if recoveries is not None:
        report["direct"] = {**direct.summarize(recoveries, direct.DirectSettings(samples=settings.direct_samples)),
                            "constrained": settings.direct_constrained}
        report["direct_problems"] = direct.recovery_rows(recoveries)
    report["findings"] = findings(report)
    write_report(report, samples, out, recoveries)
    return report


def _direct(model: GPTNeo, task: OneStepTask, files: Sequence[Path], settings: EvalSettings,
            problems: ProblemIndex) -> list[direct.Recovery]:
    """A direct model's recovery of each problem of the evaluated lines (those whose points are found)."""
    pairs = read_pairs(files, LineReport(), settings.limit)
    examples = [(pair, problem) for pair in pairs if (problem := problems.lookup(pair)) is not None]
    config = direct.DirectSettings(samples=settings.direct_samples, max_new_tokens=settings.max_new_tokens,
                                   constrained=settings.direct_constrained)
    return direct.recover(model, task, examples, config)
