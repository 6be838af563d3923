"""Many guided runs at once: each model call carries the prompts of every active run.

A guided run alone asks the model for a few proposals per generation, a batch too small to keep
any processor busy. Here up to ``batch_runs`` runs advance together: each evolves on its own
(`BasicSR.steps`) up to the point where it needs proposals, then one `propose_together` call
answers all of them; a finished run's place goes to the next waiting run. Each run keeps its own
sampling generator and `RunClock`, which counts its own evolution plus an equal share of each model
call it took part in, so its seconds (and a ``budget_seconds`` limit) mean what they mean for a run
alone. With ``batch_runs=1`` every run is exactly the single-run search.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from ..sr.expression import Expr
from ..sr.search import BasicSR, ProposalRequest, RunClock, Trace
from .proposals import NeuralProposer, propose_together


@dataclass
class GuidedRun:
    """One run of neural-guided search: the search, its proposer, and what it waits for."""

    search: BasicSR
    proposer: NeuralProposer
    clock: RunClock = field(default_factory=RunClock)
    start: list[Expr] | None = None  # the first population (None: BasicSR's own)
    request: ProposalRequest | None = None
    trace: Trace | None = None
    _steps: Generator | None = field(default=None, init=False, repr=False)

    def advance(self, proposals: Sequence[str | None] | None = None) -> bool:
        """Start the run (``proposals`` None) or answer its request; False once it is over."""
        with self.clock:
            try:
                if self._steps is None:
                    self._steps = self.search.steps(asks=True, clock=self.clock, start=self.start)
                    self.request = next(self._steps)
                else:
                    self.request = self._steps.send(proposals)
            except StopIteration as done:
                self.trace, self.request = done.value, None
        return self.trace is None


def run_lockstep(runs: Sequence[GuidedRun], batch_runs: int = 64, progress: bool = True) -> list[GuidedRun]:
    """Advance ``runs`` to their end, at most ``batch_runs`` at a time, one model call per round."""
    if batch_runs < 1:
        raise ValueError(f"batch_runs must be at least 1, got {batch_runs}")
    waiting, active = deque(runs), []
    with tqdm(total=len(runs), unit="run", desc="guided search", disable=None if progress else True) as bar:
        while waiting or active:
            while waiting and len(active) < batch_runs:
                run = waiting.popleft()
                if run.advance():
                    active.append(run)
                else:
                    bar.update()
            if not active:
                continue
            start = time.perf_counter()
            answers = propose_together([(run.proposer, run.request) for run in active])
            share = (time.perf_counter() - start) / len(active)
            still = []
            for run, proposals in zip(active, answers):
                run.clock.charge(share)
                if run.advance(proposals):
                    still.append(run)
                else:
                    bar.update()
            active = still
    return list(runs)
