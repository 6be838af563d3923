"""``python -m sr_lightning.bench``: training throughput of our path, and of the original's setup.

Our path is the real one: `OneStepDataModule` batches (per-batch padding, length grouping,
worker processes) feeding `OneStepLM` through a Lightning `Trainer`. ``--compare`` then trains,
in the same process and on the very batches ours consumed, two references built on
`transformers`' `GPTNeoForCausalLM` with the same model size, vocabulary and precision:

- ``hf-original``: the original's cost structure: every example padded to the context length,
  the 50k-way head over every position, gradient checkpointing, 4 examples per micro-batch
  x 4 accumulation steps.
- ``hf-tuned``: the same with dynamic padding (each micro-batch padded to its own longest
  example) and no checkpointing; the head still covers every position.

Both use what the HF Trainer uses by default here (fused AdamW, clipping at 1.0). Our step is
the module's own ``training_step``. The last line is ``RESULT examples_per_s=... tokens_per_s=...``
for our path. ``--tokenizer gpt2-size`` builds a 50,257-entry byte-level BPE in GPT-2's layout
(plus the four markers: 50,261) from the data, the tokenizer size of the original, since the
GPT-2 file itself cannot be downloaded here; the default is our domain tokenizer.

Timing: ``--warmup`` untimed steps, then ``--steps`` timed ones (wall clock, data loading
included, CUDA synchronised). hf-original times ``--original-steps`` (default 1) of the same
timed batches: padded to the context length, its step costs the same on any batch, and one
takes minutes on a CPU. Memory is the CUDA allocator's peak, or on a CPU the peak
resident memory of the process and its DataLoader workers, sampled every 20 ms.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback

from .commands import command_parser
from .data.batches import IGNORE
from .data.stream import resolve_files
from .data.tokenizer import gpt2_size_tokenizer
from .hf_reference import autocast, compare
from .measure import Batch, Figures, peak_memory, sync

log = logging.getLogger(__name__)


# -- configuration ---------------------------------------------------------------------------
def tokenizer_file(spec: str | None, files: Sequence[Path]) -> str | None:
    """``None``/``domain``: the shipped domain tokenizer; ``gpt2-size``: built from the data; else a file."""
    if spec in (None, "domain"):
        return None
    if spec == "gpt2-size":
        return str(gpt2_size_tokenizer(files))
    return spec


# -- configuration ---------------------------------------------------------------------------
def from_config(args: Namespace, files: Sequence[Path]) -> tuple[Any, Any, dict[str, Any]]:
    """The module and DataModule that ``train.py fit --config CONFIG`` builds (the same parser, defaults
    and task link), with the bench's options on top, training on ``--data``; and the trainer section."""
    from .cli import TrainCLI
    from .data.datamodule import OneStepDataModule
    from .module import OneStepLM

    argv = ["--config", args.config] if args.config else []
    argv += ["--seed_everything", "false", "--trainer.logger", "false", "--data.train_files", args.data,
             "--data.val_files", "null", "--data.test_files", "null"]
    tokenizer = tokenizer_file(args.tokenizer, files)
    options = {"model.preset": args.preset, "model.input_embedder": args.input_embedder,
               "model.tokenizer_file": tokenizer, "model.tokenizer_json": "null" if tokenizer else None,
               "model.compile": "true" if args.compile else None,
               "data.batch_size": args.batch_size, "data.num_workers": args.num_workers,
               "data.length_grouping": args.length_grouping, "data.pad_to_multiple": args.pad_to_multiple}
    argv += [item for key, value in options.items() if value is not None for item in (f"--{key}", str(value))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "LightningCLI's args parameter")
        cli = TrainCLI(OneStepLM, OneStepDataModule, run=False, args=argv)
    return cli.model, cli.datamodule, cli.config.trainer.as_dict()


def default_precision(accelerator: str) -> str:
    """bf16-mixed where bf16 matmuls are fast (CUDA, CPUs with AMX), else full fp32 (as measured here)."""
    if accelerator == "cuda":
        return "bf16-mixed"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16-mixed" if amx else "32-true"


# -- our path --------------------------------------------------------------------------------
class StepClock(Callback):
    """Times the optimizer steps after `warmup` and keeps every batch for the references."""

    def __init__(self, warmup: int, figures: Figures):
        self.warmup, self.figures = warmup, figures
        self.marks: list[float] = []
        self.batches: list[Batch] = []

    def on_train_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.marks = [time.perf_counter()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(pl_module.device)
        self.marks.append(time.perf_counter())
        kept = Batch(batch["input_ids"].cpu(), batch["labels"].cpu())
        self.batches.append(kept)
        if len(self.batches) > self.warmup:
            self.figures.add_batch(*kept.figures())
            self.figures.step_seconds.append(self.marks[-1] - self.marks[-2])
            self.figures.seconds = self.marks[-1] - self.marks[self.warmup]


def run_ours(module, datamodule, trainer_args: dict, steps: int, warmup: int) -> tuple[Figures, list[Batch]]:
    """Train `warmup` + `steps` optimizer steps through a Lightning Trainer and time the last `steps`."""
    import lightning as L

    figures = Figures("ours")
    clock = StepClock(warmup, figures)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|num_workers|LR scheduler).*")
        trainer = L.Trainer(
            accelerator=trainer_args["accelerator"], devices=1, precision=trainer_args["precision"],
            gradient_clip_val=trainer_args.get("gradient_clip_val") or 1.0, max_steps=warmup + steps,
            max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[clock], default_root_dir=root,
        )
        with peak_memory(torch.device(trainer_args["device"])) as peak:
            trainer.fit(module, datamodule=datamodule)
        figures.peak_memory_mb = peak()
    if figures.steps < steps:
        raise RuntimeError(f"only {figures.steps} timed steps ran: the data gave {len(clock.batches)} batches")
    return figures, clock.batches


# -- HF references ---------------------------------------------------------------------------

# -- data path alone -------------------------------------------------------------------------
def loader_throughput(dataset, batches: int) -> tuple[float, int]:
    """Examples/s of one process iterating `OneStepBatches` (read, parse, tokenize, collate), no model."""
    dataset.begin_epoch(0, 0)
    start, examples = time.perf_counter(), 0
    for batch in islice(iter(dataset), batches):
        examples += batch["n_examples"]
    seconds = time.perf_counter() - start
    return (examples / seconds if seconds else 0.0), examples


# -- graph-break audit -----------------------------------------------------------------------
def explain_compile(model, batch: Batch, device: torch.device, precision: str) -> str:
    """`torch._dynamo.explain` of the training forward, plain and with ``output_mask``: graphs and breaks."""
    import torch._dynamo

    model.train()
    ids, labels = batch.input_ids[:2].to(device), batch.labels[:2].to(device)
    lines = []
    for name, kwargs in (("forward", {}), ("forward(output_mask)", {"output_mask": labels != IGNORE})):
        torch._dynamo.reset()
        with autocast(device, precision):
            report = torch._dynamo.explain(model.forward)(ids, **kwargs)
        lines.append(f"compile audit {name}: graphs={report.graph_count} graph_breaks={report.graph_break_count}")
        lines += [f"  break: {reason}" for reason in sorted({str(b.reason).splitlines()[0]
                                                            for b in report.break_reasons})]
    torch._dynamo.reset()
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> Namespace:
    p = command_parser(prog="python -m sr_lightning.bench", description=__doc__.split("\n\n")[0],
                       config_file=False)
    p.add_argument("--data", required=True, help="one-step JSONL (a path, a glob, plain or .gz)")
    p.add_argument("--config", help="a train.py YAML config: its model, data and trainer sections apply")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps of our path")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (every implementation)")
    p.add_argument("--tokenizer", help="domain (default), gpt2-size (built from --data) or a tokenizers JSON")
    p.add_argument("--preset", help="model size (micro, tiny, small); default: the config's, else tiny")
    p.add_argument("--input-embedder", help="none, e2e or set: what the model reads of each problem's points "
                   "(found beside --data); default: the config's, else none")
    p.add_argument("--batch-size", type=int, help="examples per optimizer step (default: the config's, else 16)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers")
    p.add_argument("--length-grouping", type=int, help="sort chunks of this many batches by length (0: off)")
    p.add_argument("--pad-to-multiple", type=int, help="round batch widths up to a multiple (GPU: 64-128)")
    p.add_argument("--precision", help="Lightning precision; default bf16-mixed on CUDA and on AMX CPUs, else 32-true")
    p.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model (model.compile)")
    p.add_argument("--explain", action="store_true", help="print a torch._dynamo.explain graph-break audit")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--compare", action="store_true", help="also run the two HF references on the same batches")
    p.add_argument("--original-steps", type=int, default=1,
                   help="timed steps of hf-original (its step costs the same on any batch: all are padded "
                        "to the context length), taken from the start of our timed batches; 0: skip it")
    p.add_argument("--original-warmup", type=int, default=0, help="untimed hf-original steps first")
    p.add_argument("--loader-batches", type=int, default=20, help="batches for the data-path-only figure (0: skip)")
    p.add_argument("--json", help="write every figure to this JSON file")
    return p.parse_args(argv)


def _accelerator(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = resolve_files(args.data)
    module, datamodule, trainer_config = from_config(args, files)
    accelerator = _accelerator(args.accelerator)
    device = torch.device(accelerator)
    precision = str(args.precision or trainer_config.get("precision") or default_precision(accelerator))
    if accelerator == "cuda":
        torch.set_float32_matmul_precision("high")
    model_config, tokenizer = module.model.config, module.tokenizer
    print(f"bench: {len(files)} file(s), tokenizer vocab {tokenizer.vocab_size}, model {module.hparams.preset} "
          f"({module.model.num_parameters() / 1e6:.2f} M parameters, {model_config.n_positions} positions), "
          f"batch {datamodule.hparams.batch_size}, {accelerator}, {precision}, {torch.get_num_threads()} threads, "
          f"{datamodule.hparams.num_workers} workers, compile={bool(module.hparams.compile)}, "
          f"MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')}", flush=True)

    if args.compare and module.model.input_embedder is not None:
        raise SystemExit(f"error: --compare runs HF references that read no points; this model reads them "
                         f"({model_config.input_embedder}): add --input-embedder none")
    trainer_args = {**trainer_config, "accelerator": accelerator, "precision": precision, "device": device}
    ours, batches = run_ours(module, datamodule, trainer_args, args.steps, args.warmup)
    print(ours.line(), flush=True)
    results: dict[str, Any] = {"ours": ours.as_dict(), "precision": precision, "device": str(device),
                               "threads": torch.get_num_threads(), "vocab_size": tokenizer.vocab_size}

    if args.loader_batches:
        dataset = datamodule.datasets["train"]
        rate, examples = loader_throughput(dataset, args.loader_batches)
        print(f"loader: {rate:.1f} examples/s per worker process (OneStepBatches, {examples} examples, "
              f"model out of the loop)", flush=True)
        results["loader_examples_per_s_per_worker"] = rate
    if args.explain:
        module.model.to(device)
        print(explain_compile(module.model, batches[0], device, precision), flush=True)

    if args.compare:
        results.update(compare(batches, args, model_config, tokenizer, device, precision, ours))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"RESULT examples_per_s={ours.examples_per_s:.6g} tokens_per_s={ours.tokens_per_s:.6g}", flush=True)
    return results


if __name__ == "__main__":
    main()
