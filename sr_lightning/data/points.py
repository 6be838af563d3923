"""The problem behind an example: its data points (X, y), looked up by ``expression_id``.

Points are stored once per problem, never copied into examples. Where they come from, first match:

1. ``X_data`` / ``y_data`` fields of the record itself (the original's direct format);
2. a file given for every example (``--problems`` / ``points_file``): JSON keyed by id (``{"7":
   {"X": [[...]], "y": [...]}}``, our ``problems.json``) or NPZ (arrays ``X_<id>`` and ``y_<id>``);
3. the file the record's ``metadata.source_expressions_file`` names, found beside the data file:
   the original's gzipped pickle (``{"expressions": [{"id", "X_data", "y_data", ...}]}``) or JSON;
4. ``problems.json`` beside the data file (what ``sr_lightning.data.generate`` writes).

Unpickling can run code, so pickles are read by `restricted_load`, which admits only builtin
containers and numpy arrays and refuses anything else with one line naming the file and the type.
Points that are not finite, or whose shapes disagree, are bad input (`BadRecord`), never zeros.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..sr.problems import Problem
from .format import BadRecord, Pair

SIDECAR = "problems.json"
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("collections", "OrderedDict"),
}


class PointsFileError(ValueError):
    """A points file that cannot be read or is refused (the message is one line naming it)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` (gzipped or not) admitting only builtin containers and numpy arrays."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return _RestrictedUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as error:
        raise PointsFileError(f"{path}: refusing to unpickle {error} (a points file may hold only builtin "
                              f"containers and numpy arrays)") from None


def _problem(key: Any, X: Any, y: Any, name: str | None = None, expression: str | None = None,
             seed: int = -1) -> Problem:
    return Problem(int(key), name or str(key), expression, np.asarray(X, dtype=np.float64),
                   np.asarray(y, dtype=np.float64), seed)


def _from_pickle(path: Path) -> dict[int, Problem]:
    content = restricted_load(path)
    entries = content.get("expressions") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise PointsFileError(f"{path}: expected a dict with an 'expressions' list")
    return {int(e["id"]): _problem(e["id"], e["X_data"], e["y_data"], e.get("name"), e.get("expression"))
            for e in entries}


def _from_json(path: Path) -> dict[int, Problem]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {int(key): _problem(key, e["X"], e["y"], e.get("name"), e.get("expression"), e.get("seed", -1))
            for key, e in raw.items()}


def _from_npz(path: Path) -> dict[int, Problem]:
    with np.load(path, allow_pickle=False) as arrays:
        ids = [name[2:] for name in arrays.files if name.startswith("X_")]
        return {int(i): _problem(i, arrays[f"X_{i}"], arrays[f"y_{i}"]) for i in ids}


def read_points_file(path: str | Path) -> dict[int, Problem]:
    """Every problem of a points file (JSON, NPZ or pickle, by content), by expression id."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if path.suffix == ".npz":
            return _from_npz(path)
        if head in (b"\x1f\x8b", b"\x80\x04", b"\x80\x05", b"\x80\x02") or path.suffix in (".pkl", ".pickle"):
            return _from_pickle(path)
        return _from_json(path)
    except PointsFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as error:
        raise PointsFileError(f"{path}: not a readable points file ({type(error).__name__}: {error})") from None


def checked(problem: Problem) -> Problem:
    """``problem`` if its points are usable: X is n x d, y has n values, all finite; else `BadRecord`."""
    X, y = problem.X, problem.y
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise BadRecord(f"points disagree in shape (X {X.shape}, y {y.shape}; expression_id {problem.expression_id})")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise BadRecord(f"points are not finite (expression_id {problem.expression_id})")
    return problem


class ProblemIndex:
    """The problem (X, y) behind each example, from the sources of the module docstring.

    Files are read once, when first needed, and kept by path.
    """

    def __init__(self, points_file: str | Path | None = None):
        self.explicit = read_points_file(points_file) if points_file else None
        self.files: dict[tuple[Path, ...], dict[int, Problem]] = {}

    @classmethod
    def of(cls, problems: dict[int, Problem]) -> ProblemIndex:
        """An index over problems already in memory (the online source's, the search's)."""
        index = cls()
        index.explicit = problems
        return index

    def find(self, pair: Pair) -> Problem:
        """The example's problem, checked; `BadRecord` (a reason to skip and count) when there is none."""
        if pair.inline_points is not None:
            X, y = pair.inline_points
            return checked(_problem(pair.expression_id if pair.expression_id is not None else -1, X, y))
        if pair.expression_id is None:
            raise BadRecord("no points (the example has no expression_id and no X_data/y_data)")
        problems = self.explicit if self.explicit is not None else self._beside(pair)
        if pair.expression_id not in problems:
            raise BadRecord(f"no points (expression_id {pair.expression_id} is in no points file)")
        return checked(problems[pair.expression_id])

    def lookup(self, pair: Pair) -> Problem | None:
        """`find`, or None when the example has no usable points."""
        try:
            return self.find(pair)
        except BadRecord:
            return None

    def _beside(self, pair: Pair) -> dict[int, Problem]:
        """The points file the record names, else ``problems.json``, in its data file's folder."""
        directory = Path(pair.source.rpartition(":")[0]).parent
        named = (pair.metadata or {}).get("source_expressions_file")
        names = [named, Path(named).name] if isinstance(named, str) and named else []
        candidates = tuple(dict.fromkeys(directory / name for name in [*names, SIDECAR]))
        if candidates not in self.files:
            found = next((c for c in candidates if c.is_file()), None)
            self.files[candidates] = read_points_file(found) if found else {}
        return self.files[candidates]


def points_batch(problems: Sequence[Problem], max_points: int) -> dict[str, torch.Tensor]:
    """The points of a batch: ``points_X`` [B, n, d] and ``points_y`` [B, n] zero-padded to the batch's
    most points (at most ``max_points``, the first ones) and variables, ``points_mask`` [B, n] the real ones."""
    n = max((min(len(p.y), max_points) for p in problems), default=1)
    d = max((p.X.shape[1] for p in problems), default=1)
    X, y = torch.zeros(len(problems), n, d), torch.zeros(len(problems), n)
    mask = torch.zeros(len(problems), n, dtype=torch.bool)
    for row, problem in enumerate(problems):
        count = min(len(problem.y), max_points)
        X[row, :count, :problem.X.shape[1]] = torch.from_numpy(problem.X[:count]).float()
        y[row, :count] = torch.from_numpy(problem.y[:count]).float()
        mask[row, :count] = True
    return {"points_X": X, "points_y": y, "points_mask": mask}
