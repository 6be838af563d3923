"""Import and export Hugging Face GPT-Neo directories without needing `transformers`.

Our module names mirror GPT-Neo's, so a weight name maps by adding the `transformer.`
prefix and GPT-Neo's extra `attention.` level inside `attn`. GPT-Neo uses nn.Linear (not
GPT-2's Conv1D), so no weight is transposed. The original's checkpoint directories
(`checkpoint-20000/`) load with `load_hf_directory`, which also finds their tokenizer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.model import GPTNeo, ModelConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
TOKENIZER_FILE = "tokenizer.json"
GPT2_EOS_ID = 50256  # <|endoftext|>: GPT-Neo's bos, eos and pad
E2E_CLASS = "E2EPointEmbedder"  # the original's name of the embedder `embedders.E2EPointEmbedder` rebuilds
E2E_MAX_VARS, E2E_MLP_HIDDEN = 10, 512
# ModelConfig fields that fine-tuning may change on an imported model: they shape no weight.
REGULARISATION_FIELDS = ("embed_dropout", "attn_dropout", "resid_dropout")
# Causal-mask buffers that old transformers versions saved with the weights.
IGNORED_SUFFIXES = (".attn.attention.bias", ".attn.attention.masked_bias")
# transformers' GPTNeoConfig defaults: a key missing from config.json means this value there.
HF_DEFAULTS = {
    "model_type": "gpt_neo", "vocab_size": 50257, "max_position_embeddings": 2048, "hidden_size": 2048,
    "num_layers": 24, "num_heads": 16, "attention_types": [[["global", "local"], 12]], "intermediate_size": None,
    "activation_function": "gelu_new", "embed_dropout": 0.0, "attention_dropout": 0.0, "resid_dropout": 0.0,
    "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
}


def config_from_hf(hf: dict, source: str = CONFIG_FILE) -> ModelConfig:
    """Our config from a GPT-Neo config.json dict, read as transformers reads it.

    Refuses what our model cannot represent: another model type, local attention (GPT-Neo
    takes the layer kinds from `attention_types`), another activation, an untied head.
    """
    hf = {**HF_DEFAULTS, **hf}
    if hf["model_type"] != "gpt_neo":
        raise ValueError(f"{source}: model_type must be 'gpt_neo', got {hf['model_type']!r}")
    layers = _expand_attention_types(hf["attention_types"])
    if len(layers) != hf["num_layers"] or any(kind != "global" for kind in layers):
        raise ValueError(f"{source}: only global attention in every layer is supported, but "
                         f"attention_types={hf['attention_types']} gives {layers} for num_layers={hf['num_layers']}")
    if hf["activation_function"] != "gelu_new":
        raise ValueError(f"{source}: activation_function must be 'gelu_new', got {hf['activation_function']!r}")
    if not hf["tie_word_embeddings"]:
        raise ValueError(f"{source}: tie_word_embeddings=false is not supported (our head is tied)")
    embedder = _embedder_from_hf(hf, source)
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            n_positions=hf["max_position_embeddings"],
            hidden_size=hf["hidden_size"],
            n_layers=hf["num_layers"],
            n_heads=hf["num_heads"],
            intermediate_size=hf["intermediate_size"],
            embed_dropout=hf["embed_dropout"],
            attn_dropout=hf["attention_dropout"],
            resid_dropout=hf["resid_dropout"],
            layer_norm_eps=hf["layer_norm_epsilon"],
            **embedder,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error


def _embedder_from_hf(hf: dict, source: str) -> dict[str, Any]:
    """ModelConfig fields of the original's ``WithEmbedderForCausalLM`` config (none without one).

    Only its E2E embedder has our layout; the set variants of the original differ in their layers.
    """
    kind = hf.get("embedder_class")
    if kind is None:
        return {}
    if kind != E2E_CLASS:
        raise ValueError(f"{source}: embedder_class {kind!r} cannot be imported (only {E2E_CLASS!r})")
    sizes = {"embedder_max_input_dim": E2E_MAX_VARS, "embedder_mlp_hidden_size": E2E_MLP_HIDDEN}
    wrong = {key: hf[key] for key, size in sizes.items() if hf.get(key, size) != size}
    if wrong:
        raise ValueError(f"{source}: {wrong} differ from the e2e embedder's {sizes}")
    return {"input_embedder": "e2e", "embedder_max_points": hf.get("embedder_max_points", 64)}


def _embedder_to_hf(config: ModelConfig) -> dict[str, Any]:
    if config.input_embedder == "none":
        return {}
    if config.input_embedder != "e2e":
        raise ValueError(f"a {config.input_embedder!r} embedder has no layout of the original's to write")
    return {"embedder_class": E2E_CLASS, "embedder_max_points": config.embedder_max_points,
            "embedder_max_input_dim": E2E_MAX_VARS, "embedder_mlp_hidden_size": E2E_MLP_HIDDEN}


def config_to_hf(config: ModelConfig, bos_id: int = GPT2_EOS_ID, eos_id: int = GPT2_EOS_ID,
                 pad_id: int | None = None) -> dict:
    """The config.json that transformers' GPTNeoForCausalLM reads back as this model (plus the
    original's embedder keys for a model that reads points)."""
    return {**_embedder_to_hf(config),
        "architectures": ["GPTNeoForCausalLM"],
        "model_type": "gpt_neo",
        "activation_function": "gelu_new",
        "attention_types": [[["global"], config.n_layers]],
        "attention_layers": ["global"] * config.n_layers,
        "window_size": 256,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.n_positions,
        "hidden_size": config.hidden_size,
        "num_layers": config.n_layers,
        "num_heads": config.n_heads,
        "intermediate_size": config.intermediate_size,
        "embed_dropout": config.embed_dropout,
        "attention_dropout": config.attn_dropout,
        "resid_dropout": config.resid_dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "tie_word_embeddings": True,
        "use_cache": True,
    }


def load_hf_gpt_neo(path: str | Path) -> GPTNeo:
    """A GPTNeo from a Hugging Face GPT-Neo directory (config.json + safetensors or .bin)."""
    config, hf_state, weights_file = _read_directory(Path(path))
    return _build(config, hf_state, weights_file)


def is_hf_directory(path: str | Path) -> bool:
    """True for a directory holding a config.json, i.e. one `load_hf_gpt_neo` should read."""
    return (Path(path) / CONFIG_FILE).is_file()


def load_hf_directory(path: str | Path, tokenizer_file: str | Path | None = None) -> tuple[GPTNeo, SRTokenizer]:
    """Model and tokenizer of an HF GPT-Neo directory; `tokenizer_file` replaces DIR/tokenizer.json.

    A GPT-2/GPT-Neo tokenizer file without the four one-step markers gets them appended
    (ids 50257-50260, the original's order). Refuses a tokenizer with ids the model lacks.
    """
    path = Path(path)
    if tokenizer_file is None:
        tokenizer_file = _directory_tokenizer_file(path)
    model = load_hf_gpt_neo(path)
    tokenizer = SRTokenizer.from_file(tokenizer_file)
    check_vocab_fits(model, tokenizer, f"{path} with tokenizer {tokenizer_file}")
    return model, tokenizer


def check_vocab_fits(model: GPTNeo, tokenizer: SRTokenizer, source: str) -> None:
    """Every token id must have an embedding row; a larger (padded) model vocabulary is fine."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{source}: the tokenizer has {tokenizer.vocab_size} entries but the model's vocabulary "
                         f"only {model.config.vocab_size}; this is not the tokenizer the model was trained with")


def load_for_fine_tuning(path: str | Path, tokenizer: SRTokenizer | None = None,
                         overrides: dict[str, Any] | None = None) -> tuple[GPTNeo, SRTokenizer]:
    """Model and tokenizer to continue training an HF GPT-Neo directory's weights.

    `tokenizer` None takes DIR/tokenizer.json. The vocabularies must match exactly: our
    checkpoints size the model by the tokenizer. Of `overrides` (ModelConfig fields) only the
    dropouts apply; the shape is the checkpoint's, so differing shape fields are ignored, with
    a warning (a config such as quickstart.yaml may set `n_positions`).
    """
    path = Path(path)
    config, hf_state, weights_file = _read_directory(path)
    if tokenizer is None:
        tokenizer = SRTokenizer.from_file(_directory_tokenizer_file(path))
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{path}: the model's vocabulary has {config.vocab_size} entries, the tokenizer's "
                         f"{tokenizer.vocab_size}; fine-tuning needs the tokenizer the model was trained with")
    wanted = replace(config, **(overrides or {}))  # a misspelt field fails here
    ignored = {k: v for k, v in (overrides or {}).items()
               if k not in REGULARISATION_FIELDS and v != getattr(config, k)}
    if ignored:
        log.warning("%s: ignoring model_overrides %s; the model's shape comes from its %s", path, ignored, CONFIG_FILE)
    config = replace(config, **{k: getattr(wanted, k) for k in REGULARISATION_FIELDS})
    return _build(config, hf_state, weights_file), tokenizer


def save_hf_gpt_neo(model: GPTNeo, out_dir: str | Path, tokenizer_json: str | None = None, *,
                    bos_id: int = GPT2_EOS_ID, eos_id: int = GPT2_EOS_ID, pad_id: int | None = None) -> Path:
    """Write `model` as a GPT-Neo directory that `GPTNeoForCausalLM.from_pretrained` loads.

    `tokenizer_json` is the tokenizer's JSON text (e.g. `tokenizers.Tokenizer.to_str()`).
    `lm_head.weight` is left out: safetensors refuses shared tensors, and transformers
    ties the head to `transformer.wte.weight` on load.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(model.config, bos_id, eos_id, pad_id)
    hf_config["torch_dtype"] = str(model.wte.weight.dtype).removeprefix("torch.")
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    state = {_to_hf_name(name, model): t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(out_dir / SAFETENSORS_FILE), metadata={"format": "pt"})
    if tokenizer_json is not None:
        json.loads(tokenizer_json)  # fail here, not in some later loader, if it is not JSON
        (out_dir / TOKENIZER_FILE).write_text(tokenizer_json)
    return out_dir


def _read_directory(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Path]:
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face GPT-Neo directory ({CONFIG_FILE} not found)")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file}: not valid JSON ({error})") from error
    config = config_from_hf(hf_config, str(config_file))
    weights_file = _weights_file(path)
    return config, _read_weights(weights_file), weights_file


def _build(config: ModelConfig, hf_state: dict[str, torch.Tensor], source: Path) -> GPTNeo:
    model = GPTNeo(config)
    model.load_state_dict(_from_hf_names(hf_state, model, str(source)))
    return model


def _directory_tokenizer_file(path: Path) -> Path:
    tokenizer_file = path / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} in the checkpoint directory; "
                                "give the tokenizer file it was trained with explicitly")
    return tokenizer_file


def _expand_attention_types(attention_types: list) -> list[str]:
    """[[["global", "local"], 2]] -> ["global", "local", "global", "local"] (GPT-Neo's rule)."""
    return [kind for kinds, repeat in attention_types for _ in range(repeat) for kind in kinds]


def _weights_file(path: Path) -> Path:
    for name in (SAFETENSORS_FILE, TORCH_FILE):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: neither {SAFETENSORS_FILE} nor {TORCH_FILE} found")


def _read_weights(weights_file: Path) -> dict[str, torch.Tensor]:
    try:
        if weights_file.suffix == ".safetensors":
            return load_file(str(weights_file))
        return torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip each raise their own kind
        raise ValueError(f"{weights_file}: cannot read the weights ({type(error).__name__}: {error})") from error


def _to_hf_name(name: str, model: GPTNeo) -> str:
    """GPT-Neo's name of a weight; a model that reads points is the original's wrapper: its embedder
    under ``input_embedder.``, the LM under ``wrapped.``."""
    if name.startswith("input_embedder."):
        return name
    return _lm_prefix(model) + "transformer." + name.replace(".attn.", ".attn.attention.")


def _lm_prefix(model: GPTNeo) -> str:
    return "" if model.input_embedder is None else "wrapped."


def _from_hf_names(hf_state: dict[str, torch.Tensor], model: GPTNeo, source: str) -> dict[str, torch.Tensor]:
    """Rename HF weights to ours, checking names and shapes; raises listing every problem."""
    expected = model.state_dict()
    by_hf_name = {_to_hf_name(name, model): name for name in expected}
    prefix = _lm_prefix(model)
    head = hf_state.get(prefix + "lm_head.weight")
    wte = hf_state.get(prefix + "transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight; "
                         "only tied embeddings are supported")
    state, unexpected, wrong_shape = {}, [], []
    for hf_name, tensor in hf_state.items():
        if hf_name == prefix + "lm_head.weight" or hf_name.endswith(IGNORED_SUFFIXES):
            continue
        name = by_hf_name.get(hf_name)
        if name is None:
            unexpected.append(hf_name)
        elif tensor.shape != expected[name].shape:
            wrong_shape.append(f"{hf_name}: {tuple(tensor.shape)} in file, {tuple(expected[name].shape)} expected")
        else:
            state[name] = tensor
    missing = [hf for hf, name in by_hf_name.items() if name not in state and hf not in hf_state]
    problems = [f"{label}: {items}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)) if items]
    if problems:
        raise ValueError(f"{source} does not fit the model in config.json; " + "; ".join(problems))
    return state
