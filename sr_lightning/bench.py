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

import argparse
import hashlib
import json
import logging
import math
import os
import resource
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from .data.batches import IGNORE
from .data.format import EOS, SPECIAL_TOKENS, BadRecord
from .data.stream import LineReport, cache_dir, iter_raw_lines, parse_line, resolve_files
from .data.tokenizer import SRTokenizer, train_gpt2_style_tokenizer

log = logging.getLogger(__name__)

GPT2_VOCAB_SIZE = 50_257  # GPT-2's BPE entries; <|endoftext|> is the last one
HF_MICRO_BATCH = 4  # the original's per-device batch; its 16-example step was 4 x 4 accumulation
TOKENIZER_LINES = 20_000  # data lines the gpt2-size tokenizer learns its merges from


# -- figures ---------------------------------------------------------------------------------
@dataclass
class Figures:
    """What one implementation did in its timed steps, and how fast."""

    name: str
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    """Real tokens, padding excluded."""
    target_tokens: int = 0
    """Labelled (target) positions: the tokens the loss is computed on."""
    computed_tokens: int = 0
    """Positions the model ran on, padding included."""
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    """Peak GPU memory on CUDA; on CPU the peak resident memory of the process and its loader workers."""
    step_seconds: list[float] = field(default_factory=list)

    def add_batch(self, examples: int, tokens: int, target_tokens: int, computed_tokens: int) -> None:
        self.steps += 1
        self.examples += examples
        self.tokens += tokens
        self.target_tokens += target_tokens
        self.computed_tokens += computed_tokens

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def target_tokens_per_s(self) -> float:
        return self.target_tokens / self.seconds if self.seconds else 0.0

    @property
    def padding_share(self) -> float:
        return 1 - self.tokens / self.computed_tokens if self.computed_tokens else 0.0

    def line(self) -> str:
        return (f"{self.name:<12} examples/s={self.examples_per_s:.4g} tokens/s={self.tokens_per_s:.4g} "
                f"target_tokens/s={self.target_tokens_per_s:.4g} padding={100 * self.padding_share:.1f}% "
                f"peak_memory={self.peak_memory_mb:.0f}MB steps={self.steps} seconds={self.seconds:.2f}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples_per_s": self.examples_per_s, "tokens_per_s": self.tokens_per_s,
                "target_tokens_per_s": self.target_tokens_per_s, "padding_share": self.padding_share}


@dataclass
class Batch:
    """The part of a training batch the references need, kept on the CPU."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    """Shifted as in our batches: ``labels[b, t]`` is the token predicted from position ``t``."""

    @property
    def lengths(self) -> torch.Tensor:
        """Real length of each row: the last label predicts the final token (eos) from one before it."""
        positions = torch.arange(self.labels.shape[1]).expand_as(self.labels)
        return torch.where(self.labels != IGNORE, positions, -2).amax(dim=1) + 2

    def figures(self) -> tuple[int, int, int, int]:
        """(examples, real tokens, target tokens, computed tokens) of this batch as our path runs it."""
        lengths = self.lengths
        return (len(lengths), int(lengths.sum()), int((self.labels != IGNORE).sum()), self.input_ids.numel())


# -- memory ----------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for task in tasks for c in (task / "children").read_text().split()]
    except OSError:  # the process ended while we looked
        return []


def _rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process and all its descendants (the DataLoader workers), in MB.

    Pages a forked worker still shares with its parent count twice: an upper bound.
    """
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/statm") as statm:
            own = int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0
    return own + sum(_rss_mb(child) for child in _children(pid))


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float]]:
    """Peak memory inside the block, in MB: CUDA's allocator peak, or sampled resident memory on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device) / 2**20
        return
    peak, done = [_rss_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_mb())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- tokenizer of the original's size --------------------------------------------------------
def _texts(files: Sequence[Path], limit: int) -> list[str]:
    texts, report = [], LineReport()
    for source, raw in iter_raw_lines(files, report):
        if len(texts) == limit:
            break
        try:
            texts.append(parse_line(raw, source).text)
        except BadRecord:
            continue
    return texts


def gpt2_size_tokenizer_json(texts: Sequence[str]) -> str:
    """A byte-level BPE with GPT-2's pre-tokenizer and layout: 50,257 entries, ``<|endoftext|>`` = 50256.

    Merges are learned from ``texts`` (a few thousand exist in one-step data); unused entries
    fill the rest, so the vocabulary, the embedding and the 50,261-way head (after SRTokenizer
    appends the four markers) have the original's size.
    """
    learned = json.loads(train_gpt2_style_tokenizer(texts, GPT2_VOCAB_SIZE).to_str())
    ordered = sorted(learned["model"]["vocab"].items(), key=lambda item: item[1])
    tokens = [token for token, _ in ordered if token not in SPECIAL_TOKENS]
    tokens += [f"<|unused{i}|>" for i in range(len(tokens), GPT2_VOCAB_SIZE - 1)] + [EOS]
    learned["model"]["vocab"] = {token: i for i, token in enumerate(tokens)}
    learned["added_tokens"] = [{"id": GPT2_VOCAB_SIZE - 1, "content": EOS, "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True}]
    return json.dumps(learned, ensure_ascii=False)


def gpt2_size_tokenizer(files: Sequence[Path], lines: int = TOKENIZER_LINES) -> Path:
    """The file of `gpt2_size_tokenizer_json` for these data files, built once into the cache."""
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha1(json.dumps([stats, lines]).encode()).hexdigest()[:16]
    path = cache_dir() / "bench" / f"gpt2-size-{key}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(gpt2_size_tokenizer_json(_texts(files, lines)), encoding="utf-8")
        partial.replace(path)
        log.info("built the gpt2-size tokenizer into %s", path)
    return path


def tokenizer_file(spec: str | None, files: Sequence[Path]) -> str | None:
    """``None``/``domain``: the shipped domain tokenizer; ``gpt2-size``: built from the data; else a file."""
    if spec in (None, "domain"):
        return None
    if spec == "gpt2-size":
        return str(gpt2_size_tokenizer(files))
    return spec


# -- configuration ---------------------------------------------------------------------------
def _section(config: dict, name: str) -> dict:
    """A LightningCLI YAML section's arguments, plain or under ``init_args``."""
    section = config.get(name) or {}
    return dict(section.get("init_args", section))


def load_config(path: str | None) -> dict[str, dict]:
    """The model, data and trainer sections of a ``train.py`` YAML config (empty without one)."""
    if path is None:
        return {"model": {}, "data": {}, "trainer": {}}
    import yaml

    config = yaml.safe_load(Path(path).read_text()) or {}
    return {name: _section(config, name) for name in ("model", "data", "trainer")}


def default_precision(accelerator: str) -> str:
    """bf16-mixed where bf16 matmuls are fast (CUDA, CPUs with AMX), else full fp32 (as measured here)."""
    if accelerator == "cuda":
        return "bf16-mixed"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16-mixed" if amx else "32-true"


def _autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("32-true", "32", "64-true"):
        return nullcontext()
    raise ValueError(f"the HF references support precision 32-true or bf16-mixed, not {precision!r}")


# -- our path --------------------------------------------------------------------------------
class StepClock(Callback):
    """Times the optimizer steps after `warmup` and keeps every batch for the references."""

    def __init__(self, warmup: int, figures: Figures):
        self.warmup, self.figures = warmup, figures
        self.marks: list[float] = []
        self.batches: list[Batch] = []

    def on_train_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.marks = [time.perf_counter()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.marks.append(time.perf_counter())
        kept = Batch(batch["input_ids"].cpu(), batch["labels"].cpu())
        self.batches.append(kept)
        if len(self.batches) > self.warmup:
            self.figures.add_batch(*kept.figures())
            self.figures.step_seconds.append(self.marks[-1] - self.marks[-2])
            self.figures.seconds = self.marks[-1] - self.marks[self.warmup]


def build_module(model_args: dict, tokenizer: str | None, compile_model: bool):
    from .module import OneStepLM

    args = {**model_args, "compile": compile_model or model_args.get("compile", False)}
    if tokenizer is not None:
        args.update(tokenizer_file=tokenizer, tokenizer_json=None)
    return OneStepLM(**args)


def build_datamodule(files: Sequence[Path], data_args: dict, overrides: dict, module):
    from .data.datamodule import OneStepDataModule

    args = {**data_args, **{k: v for k, v in overrides.items() if v is not None}}
    args.update(train_files=[str(f) for f in files], val_files=None, test_files=None)
    datamodule = OneStepDataModule(**args)
    datamodule.tokenizer = module.tokenizer
    return datamodule


def run_ours(module, datamodule, trainer_args: dict, steps: int, warmup: int) -> tuple[Figures, list[Batch]]:
    """Train `warmup` + `steps` optimizer steps through a Lightning Trainer and time the last `steps`."""
    import lightning as L

    figures = Figures("ours")
    clock = StepClock(warmup, figures)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|num_workers|LR scheduler).*")
        trainer = L.Trainer(
            accelerator=trainer_args["accelerator"], devices=1, precision=trainer_args["precision"],
            gradient_clip_val=trainer_args.get("gradient_clip_val", 1.0), max_steps=warmup + steps,
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
def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise SystemExit("--compare needs the optional `transformers` package: pip install 'sr-lightning[bench]' "
                         f"({error})") from None
    transformers.logging.set_verbosity_error()
    return transformers


def hf_model(config, eos_id: int, device: torch.device, checkpointing: bool):
    """transformers' GPTNeoForCausalLM with our model's shape, vocabulary and dropout."""
    from .interop import config_to_hf

    transformers = _transformers()
    hf_config = transformers.GPTNeoConfig.from_dict({**config_to_hf(config, eos_id, eos_id), "use_cache": False})
    model = transformers.GPTNeoForCausalLM(hf_config).to(device).train()
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model


def hf_optimizer(model) -> torch.optim.Optimizer:
    """The HF Trainer's default here: fused AdamW, lr 1e-4, decay 0.01 except biases and LayerNorms."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, fused=True)


@dataclass
class Reference:
    """One HF setup: whether it pads to the context length and recomputes activations."""

    name: str
    pad_to: int | None
    """Pad every micro-batch to this length (the original's context length); None: dynamic padding."""
    checkpointing: bool
    micro_batch: int = HF_MICRO_BATCH

    def micro_batches(self, batch: Batch, pad_id: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(input_ids, attention_mask, HF labels) per micro-batch; HF labels are unshifted."""
        lengths = batch.lengths
        hf_labels = torch.cat([torch.full_like(batch.labels[:, :1], IGNORE), batch.labels[:, :-1]], dim=1)
        for start in range(0, len(lengths), self.micro_batch):
            rows = slice(start, start + self.micro_batch)
            width = self.pad_to or int(lengths[rows].max())
            ids = torch.full((len(lengths[rows]), width), pad_id, dtype=torch.long)
            labels = torch.full_like(ids, IGNORE)
            real = min(width, batch.input_ids.shape[1])
            ids[:, :real] = batch.input_ids[rows, :real]
            labels[:, :real] = hf_labels[rows, :real]
            mask = (torch.arange(width) < lengths[rows, None]).long()
            yield ids, mask, labels

    def computed_tokens(self, batch: Batch) -> int:
        lengths = batch.lengths
        return sum(len(lengths[i:i + self.micro_batch]) * (self.pad_to or int(lengths[i:i + self.micro_batch].max()))
                   for i in range(0, len(lengths), self.micro_batch))


def reference_step(ref: Reference, model, optimizer, batch: Batch, pad_id: int, device: torch.device,
                   precision: str) -> None:
    """One optimizer step as the HF Trainer takes it: micro-batches, accumulated loss, clip, step."""
    parts = list(ref.micro_batches(batch, pad_id))
    for ids, mask, labels in parts:
        with _autocast(device, precision):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        (loss / len(parts)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_reference(ref: Reference, config, tokenizer: SRTokenizer, warmup: Sequence[Batch], timed: Sequence[Batch],
                  device: torch.device, precision: str) -> Figures:
    figures = Figures(ref.name)
    with peak_memory(device) as peak:
        model = hf_model(config, tokenizer.eos_id, device, ref.checkpointing)
        optimizer = hf_optimizer(model)
        for batch in warmup:
            reference_step(ref, model, optimizer, batch, tokenizer.pad_id, device, precision)
        for batch in timed:
            _sync(device)
            start = time.perf_counter()
            reference_step(ref, model, optimizer, batch, tokenizer.pad_id, device, precision)
            _sync(device)
            figures.step_seconds.append(time.perf_counter() - start)
            examples, tokens, targets, _ = batch.figures()
            figures.add_batch(examples, tokens, targets, ref.computed_tokens(batch))
            log.info("%s step %d: %.2f s", ref.name, figures.steps, figures.step_seconds[-1])
        figures.seconds = sum(figures.step_seconds)
        figures.peak_memory_mb = peak()
    del model, optimizer
    return figures


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
        with _autocast(device, precision):
            report = torch._dynamo.explain(model.forward)(ids, **kwargs)
        lines.append(f"compile audit {name}: graphs={report.graph_count} graph_breaks={report.graph_break_count}")
        lines += [f"  break: {reason}" for reason in sorted({str(b.reason).splitlines()[0]
                                                            for b in report.break_reasons})]
    torch._dynamo.reset()
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sr_lightning.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="one-step JSONL (a path, a glob, plain or .gz)")
    p.add_argument("--config", help="a train.py YAML config: its model, data and trainer sections apply")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps of our path")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (every implementation)")
    p.add_argument("--tokenizer", help="domain (default), gpt2-size (built from --data) or a tokenizers JSON")
    p.add_argument("--preset", help="model size (micro, tiny, small); default: the config's, else tiny")
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
    config = load_config(args.config)
    accelerator = _accelerator(args.accelerator)
    device = torch.device(accelerator)
    precision = str(args.precision or config["trainer"].get("precision") or default_precision(accelerator))
    if accelerator == "cuda":
        torch.set_float32_matmul_precision("high")
    model_args = {**config["model"], **({"preset": args.preset} if args.preset else {})}
    module = build_module(model_args, tokenizer_file(args.tokenizer, files), args.compile)
    overrides = {"batch_size": args.batch_size, "num_workers": args.num_workers,
                 "length_grouping": args.length_grouping, "pad_to_multiple": args.pad_to_multiple}
    datamodule = build_datamodule(files, config["data"], overrides, module)
    model_config, tokenizer = module.model.config, module.tokenizer
    print(f"bench: {len(files)} file(s), tokenizer vocab {tokenizer.vocab_size}, model {model_args.get('preset', 'tiny')} "
          f"({module.model.num_parameters() / 1e6:.2f} M parameters, {model_config.n_positions} positions), "
          f"batch {datamodule.hparams.batch_size}, {accelerator}, {precision}, {torch.get_num_threads()} threads, "
          f"{datamodule.hparams.num_workers} workers, compile={bool(module.hparams.compile)}, "
          f"MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')}", flush=True)

    trainer_args = {**config["trainer"], "accelerator": accelerator, "precision": precision, "device": device}
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


def compare(batches: Sequence[Batch], args: argparse.Namespace, model_config, tokenizer: SRTokenizer,
            device: torch.device, precision: str, ours: Figures) -> dict[str, Any]:
    """Run both references on our batches (warmup ones first) and print the ratios."""
    warmup, timed = batches[:args.warmup], batches[args.warmup:args.warmup + args.steps]
    tuned = run_reference(Reference("hf-tuned", None, False), model_config, tokenizer, warmup, timed,
                          device, precision)
    print(tuned.line(), flush=True)
    results: dict[str, Any] = {"hf_tuned": tuned.as_dict(), "ratios": {"vs_tuned": _ratio(ours, tuned)}}
    ratio_line = f"ratio ours/hf-tuned={results['ratios']['vs_tuned']:.2f}x"
    if args.original_steps:
        original_ref = Reference("hf-original", model_config.n_positions, True)
        start = args.original_warmup
        original = run_reference(original_ref, model_config, tokenizer, timed[:start],
                                 timed[start:start + args.original_steps], device, precision)
        print(original.line(), flush=True)
        results["hf_original"] = original.as_dict()
        results["ratios"]["vs_original"] = _ratio(ours, original)
        ratio_line = f"ratio ours/hf-original={results['ratios']['vs_original']:.2f}x " + ratio_line
    print(f"{ratio_line} (examples/s, same batches, same model size, vocabulary {tokenizer.vocab_size}, "
          f"{precision})", flush=True)
    return results


def _ratio(ours: Figures, other: Figures) -> float:
    return ours.examples_per_s / other.examples_per_s if other.examples_per_s else math.inf


if __name__ == "__main__":
    main()
