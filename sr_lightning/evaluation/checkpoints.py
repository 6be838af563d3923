"""Which model to evaluate: the newest run, its BEST checkpoint, and what that run was trained on.

The original's users evaluated step 60k while the best validation loss was at step 20k.
Here a run directory always resolves to the checkpoint ModelCheckpoint recorded as best on
``val/loss``, and the info that comes back says which file, which step, and how far the run
went past it, so a report can never silently describe the wrong model.

Paths stored in a checkpoint (the best model's path, the data files) are relative to the
directory training ran in; they are looked up from there, from the run directory's ancestors
and, for checkpoints, by file name inside the run's ``checkpoints/`` folder, so a run that was
moved or copied still resolves.
"""

from __future__ import annotations

import glob
import inspect
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.tokenizer import SRTokenizer
from ..interop import is_hf_directory, load_hf_directory
from ..model import GPTNeo
from ..task import OneStepTask
from .curves import last_logged_step

DEFAULT_RUNS_DIR = "runs"
MONITOR = "val/loss"
LAST = "last.ckpt"
_SCORE_IN_NAME = re.compile(r"val_loss=(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


class EvaluationInputError(Exception):
    """A missing or unreadable input; the message is one line for the user (the CLI exits 2)."""


# -- finding runs and checkpoints -----------------------------------------------------------
def checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.ckpt"))


def newest_run(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The ``version_N`` directory under ``runs_dir`` whose newest checkpoint was written last."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise EvaluationInputError(f"no run directory {runs_dir}/ here; train first or pass --checkpoint PATH")
    newest: dict[Path, float] = {}
    for ckpt in runs_dir.glob("**/checkpoints/*.ckpt"):
        run = ckpt.parent.parent
        newest[run] = max(newest.get(run, 0.0), ckpt.stat().st_mtime)
    if not newest:
        raise EvaluationInputError(f"no checkpoints under {runs_dir}/ (and no config.json of an HF GPT-Neo "
                                   "directory); train first or pass --checkpoint PATH")
    return max(newest, key=newest.__getitem__)


def run_dir_of(checkpoint: Path) -> Path | None:
    """``.../version_N`` for ``.../version_N/checkpoints/x.ckpt``; None for a loose file."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, tensors memory-mapped (only the small entries are touched)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # zip, pickle and torch each raise their own kind
        raise EvaluationInputError(f"{path}: not a readable checkpoint ({_reason(error)})") from error


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _monitor_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The state of the ModelCheckpoint callback that monitored ``val/loss``, if any."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor") == MONITOR:
            return state
    return None


def _in_run(recorded: str, run_dir: Path) -> Path | None:
    """A recorded checkpoint path as it is now: the same file name in this run, or the path as stored."""
    for candidate in (run_dir / "checkpoints" / Path(recorded).name, Path(recorded)):
        if candidate.is_file():
            return candidate
    return None


def _best_by_name(files: list[Path]) -> Path | None:
    """Lowest ``val_loss=`` in the file names (top-k files carry their score)."""
    scored = [(float(m.group(1)), f) for f in files if (m := _SCORE_IN_NAME.search(f.name))]
    return min(scored)[1] if scored else None


def best_checkpoint(run_dir: Path) -> dict[str, Any]:
    """``{"best": Path, "best_step", "last_step", "best_score", "how"}`` for a run directory.

    ``last_step`` is the last optimizer step the run took (checkpoints and TensorBoard events).

    The recorded ``best_model_path`` of the ``val/loss`` ModelCheckpoint comes first; then the
    lowest ``val_loss=`` file name; a run that never monitored ``val/loss`` falls back to its last
    checkpoint, and ``how`` says so.
    """
    files = checkpoint_files(run_dir)
    if not files:
        raise EvaluationInputError(f"{run_dir}: no checkpoints/*.ckpt in this run directory")
    last_file = run_dir / "checkpoints" / LAST
    if not last_file.is_file():
        last_file = max(files, key=lambda f: f.stat().st_mtime)
    last = read_checkpoint(last_file)
    state = _monitor_state(last)
    best, how, score = None, "", None
    if state and state.get("best_model_path"):
        best = _in_run(state["best_model_path"], run_dir)
        how, score = "recorded by ModelCheckpoint", state.get("best_model_score")
    if best is None and (best := _best_by_name(files)) is not None:
        how, score = "lowest val_loss in the file names", float(_SCORE_IN_NAME.search(best.name).group(1))
    if best is None:
        best, how = last_file, f"no checkpoint records {MONITOR}: the last one"
    best_step = int(read_checkpoint(best)["global_step"]) if best != last_file else int(last["global_step"])
    # last.ckpt is refreshed only when a checkpoint is saved: the events know how far training went.
    last_step = max(int(last["global_step"]), last_logged_step(run_dir) or 0)
    return {"best": best, "best_step": best_step, "last_step": last_step,
            "best_score": None if score is None else float(score), "how": how}


# -- the run's data -------------------------------------------------------------------------
def _run_data_hparams(checkpoint: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """The datamodule's arguments: saved in the checkpoint, else the run's config.yaml."""
    if checkpoint.get("datamodule_hyper_parameters"):
        return dict(checkpoint["datamodule_hyper_parameters"])
    return _run_config_section(run_dir, "data")


def _run_config_section(run_dir: Path | None, name: str) -> dict[str, Any]:
    """One section (``data``, ``trainer``) of the run's config.yaml; empty without one."""
    config = run_dir / "config.yaml" if run_dir else None
    if config is None or not config.is_file():
        return {}
    return dict((yaml.safe_load(config.read_text()) or {}).get(name) or {})


def rebase(spec: str, run_dir: Path | None) -> str:
    """A relative path or glob from the run's config, found from here or from the run's ancestors."""
    if Path(spec).is_absolute() or glob.glob(spec) or run_dir is None:
        return spec
    for ancestor in run_dir.resolve().parents:
        if glob.glob(str(ancestor / spec)):
            return str(ancestor / spec)
    return spec


def _default_file(data: dict[str, Any], split: str) -> str | None:
    """Where a run without ``<split>_files`` read that split: the default data set, or the online held-out set."""
    from ..data.datamodule import OneStepDataModule
    from ..data.online import HELDOUT_FILE

    accepted = inspect.signature(OneStepDataModule).parameters
    module = OneStepDataModule(**{k: v for k, v in data.items() if k in accepted})
    if module.hparams.source == "online":
        return str(module._heldout_dir() / HELDOUT_FILE) if split == "val" else None
    return str(module._default_dir() / f"{split}.jsonl") if module._uses_default_data() else None


def run_files(info: dict[str, Any], split: str = "val", hint: str = "pass --data PATH") -> list[str]:
    """The run's ``split`` data (``train`` or ``val``): ``data.<split>_files``, or the default data set's file."""
    data = info.get("data") or {}
    run_dir = Path(info["run_dir"]) if info.get("run_dir") else None
    spec = data.get(f"{split}_files")
    if spec is None and data:
        spec = _default_file(data, split)
    if spec is None:
        what = {"train": "training", "val": "validation"}[split]
        raise EvaluationInputError(f"the checkpoint names no {what} files; {hint}")
    specs = [spec] if isinstance(spec, str) else list(spec)
    return [rebase(str(s), run_dir) for s in specs]


def points_file(info: dict[str, Any]) -> str | None:
    """The points file the run was given (``--data.points_file``), found as its data files are; None without."""
    spec = (info.get("data") or {}).get("points_file")
    return rebase(spec, Path(info["run_dir"]) if info.get("run_dir") else None) if spec else None


def validated_lines(info: dict[str, Any], files: list[Path]) -> tuple[int | None, str]:
    """How many leading lines of the validation ``files`` the run validated on (None: all), and why.

    Validation reads its files in order in batches of ``val_batch_size`` lines, and Lightning's
    ``limit_val_batches`` (an int: batches; a float: a share of them) stops it early, so the run's
    ``val/loss`` describes the first ``limit x batch`` lines alone.
    """
    from ..data.stream import count_lines

    trainer = _run_config_section(Path(info["run_dir"]) if info.get("run_dir") else None, "trainer")
    limit = trainer.get("limit_val_batches")
    data = info.get("data") or {}
    batch = data.get("val_batch_size") or data.get("batch_size")
    if limit is None or batch is None or (isinstance(limit, float) and limit >= 1.0):
        return None, "all of them, as the run validated"
    if isinstance(limit, float):
        batches = int(limit * -(-sum(count_lines(f) for f in files) // batch))
        how = f"limit_val_batches {limit} of its batches of {batch}"
    else:
        batches, how = int(limit), f"limit_val_batches {limit} x val batch {batch}"
    processes = int(trainer.get("devices") or 1) * int(trainer.get("num_nodes") or 1) \
        if isinstance(trainer.get("devices"), int) else 1
    note = f"; the run spread them over {processes} processes" if processes > 1 else ""
    return batches * batch * processes, f"the lines the run validated on ({how}{note})"


# -- loading --------------------------------------------------------------------------------
def load_for_evaluation(path: str | Path, tokenizer_file: str | Path | None = None,
                        device: str | torch.device = "cpu") -> tuple[GPTNeo, OneStepTask, dict[str, Any]]:
    """Model (eval mode, on ``device``), its task contract (tokenizer, context length, labels), and what was loaded.

    ``path``: a run directory (its best checkpoint), a directory of runs (the newest one's best),
    a ``.ckpt`` file, or an HF GPT-Neo directory (``config.json`` + weights + ``tokenizer.json``
    or ``tokenizer_file``).
    ``info`` keys: ``checkpoint``, ``kind``, ``step``, ``recorded_val_loss`` (the ``val/loss`` ModelCheckpoint
    recorded when it saved this file), ``best_step``, ``last_step``,
    ``steps_past_best``, ``best_checkpoint``, ``best_how``, ``run_dir``, ``data`` (datamodule args).
    """
    path = Path(path)
    if not path.exists():
        raise EvaluationInputError(f"checkpoint not found: {path}")
    if path.is_dir() and is_hf_directory(path):
        model, task, info = _load_hf(path, tokenizer_file)
    else:
        model, task, info = _load_lightning(path, tokenizer_file)
    return model.to(device).eval(), task, info


def _tokenizer(path: str | Path) -> SRTokenizer:
    try:
        return SRTokenizer.from_file(path)
    except (OSError, ValueError) as error:
        raise EvaluationInputError(str(error)) from error


def _load_hf(path: Path, tokenizer_file: str | Path | None) -> tuple[GPTNeo, OneStepTask, dict[str, Any]]:
    try:
        model, tokenizer = load_hf_directory(path, tokenizer_file)
    except (OSError, ValueError, KeyError) as error:
        raise EvaluationInputError(f"{path}: cannot load the HF GPT-Neo directory ({_reason(error)})") from error
    info = {"checkpoint": str(path), "kind": "hf", "step": None, "recorded_val_loss": None, "best_step": None,
            "last_step": None,
            "steps_past_best": None, "best_checkpoint": None, "best_how": None, "run_dir": None, "data": {}}
    return model, OneStepTask.for_model(tokenizer, model), info


def _task_of_run(task: OneStepTask, data: dict[str, Any]) -> OneStepTask:
    """The task as the run's data set it: its mode, and two settings checkpoints written before the task
    contract kept among the data's arguments."""
    return replace(task, max_length=data.get("max_length") or task.max_length,
                   include_target_token=bool(data.get("include_target_token", task.include_target_token)),
                   mode=data.get("mode") or task.mode)


def _load_lightning(path: Path, tokenizer_file: str | Path | None) -> tuple[GPTNeo, OneStepTask, dict[str, Any]]:
    from ..module import OneStepLM  # Lightning is slow to import; HF directories never need it

    if path.is_dir() and not checkpoint_files(path):  # runs/ or runs/<name>/: the newest run in it
        path = newest_run(path)
    run_dir = path if path.is_dir() else run_dir_of(path)
    best = best_checkpoint(run_dir) if run_dir is not None and checkpoint_files(run_dir) else None
    if path.is_dir():
        path = best["best"]
    checkpoint = read_checkpoint(path)
    try:
        lm = OneStepLM.load_from_checkpoint(path, map_location="cpu")
    except Exception as error:  # a checkpoint of another model, or damaged tensors
        raise EvaluationInputError(f"{path}: not a readable sr_lightning checkpoint ({_reason(error)})") from error
    data = _run_data_hparams(checkpoint, run_dir)
    task = _task_of_run(lm.task, data)
    if tokenizer_file:
        task = replace(task, tokenizer=_tokenizer(tokenizer_file))
    state = _monitor_state(checkpoint) or {}
    recorded = state.get("current_score")
    info = {"checkpoint": str(path), "kind": "lightning", "step": int(checkpoint["global_step"]),
            "recorded_val_loss": None if recorded is None else float(recorded),
            "best_step": best and best["best_step"], "last_step": best and best["last_step"],
            "steps_past_best": best and best["last_step"] - best["best_step"],
            "best_checkpoint": best and str(best["best"]), "best_how": best and best["how"],
            "run_dir": None if run_dir is None else str(run_dir),
            "data": data}
    return lm.model, task, info
