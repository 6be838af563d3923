"""Import and export Hugging Face GPT-Neo directories without needing `transformers`.

Our module names mirror GPT-Neo's, so a weight name maps by adding the `transformer.`
prefix and GPT-Neo's extra `attention.` level inside `attn`. GPT-Neo uses nn.Linear (not
GPT-2's Conv1D), so no weight is transposed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sr_lightning.model import GPTNeo, ModelConfig

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
TOKENIZER_FILE = "tokenizer.json"
GPT2_EOS_ID = 50256  # <|endoftext|>: GPT-Neo's bos, eos and pad
# Causal-mask buffers that old transformers versions saved with the weights.
IGNORED_SUFFIXES = (".attn.attention.bias", ".attn.attention.masked_bias")


def config_from_hf(hf: dict, source: str = CONFIG_FILE) -> ModelConfig:
    """Our config from a GPT-Neo config.json dict; refuses what our model cannot represent."""
    layers = hf.get("attention_layers") or _expand_attention_types(hf.get("attention_types", []))
    if len(layers) != hf["num_layers"] or any(kind != "global" for kind in layers):
        raise ValueError(f"{source}: only global attention in every layer is supported, but "
                         f"attention_layers={layers} (attention_types={hf.get('attention_types')}) "
                         f"for num_layers={hf['num_layers']}")
    if hf.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"{source}: activation_function must be 'gelu_new', got {hf['activation_function']!r}")
    if hf.get("tie_word_embeddings", True) is False:
        raise ValueError(f"{source}: tie_word_embeddings=false is not supported (our head is tied)")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        n_positions=hf["max_position_embeddings"],
        hidden_size=hf["hidden_size"],
        n_layers=hf["num_layers"],
        n_heads=hf["num_heads"],
        intermediate_size=hf.get("intermediate_size"),
        embed_dropout=hf.get("embed_dropout", 0.0),
        attn_dropout=hf.get("attention_dropout", 0.0),
        resid_dropout=hf.get("resid_dropout", 0.0),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def config_to_hf(config: ModelConfig, bos_id: int = GPT2_EOS_ID, eos_id: int = GPT2_EOS_ID,
                 pad_id: int | None = None) -> dict:
    """The config.json that transformers' GPTNeoForCausalLM reads back as this model."""
    return {
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
    path = Path(path)
    config_file = path / CONFIG_FILE
    config = config_from_hf(json.loads(config_file.read_text()), str(config_file))
    weights_file = _weights_file(path)
    if weights_file.suffix == ".safetensors":
        hf_state = load_file(str(weights_file))
    else:
        hf_state = torch.load(weights_file, map_location="cpu", weights_only=True)
    model = GPTNeo(config)
    model.load_state_dict(_from_hf_names(hf_state, model, str(weights_file)))
    return model


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
    state = {_to_hf_name(name): t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(out_dir / SAFETENSORS_FILE), metadata={"format": "pt"})
    if tokenizer_json is not None:
        json.loads(tokenizer_json)  # fail here, not in some later loader, if it is not JSON
        (out_dir / TOKENIZER_FILE).write_text(tokenizer_json)
    return out_dir


def _expand_attention_types(attention_types: list) -> list[str]:
    """[[["global", "local"], 2]] -> ["global", "local", "global", "local"] (GPT-Neo's rule)."""
    return [kind for kinds, repeat in attention_types for _ in range(repeat) for kind in kinds]


def _weights_file(path: Path) -> Path:
    for name in (SAFETENSORS_FILE, TORCH_FILE):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: neither {SAFETENSORS_FILE} nor {TORCH_FILE} found")


def _to_hf_name(name: str) -> str:
    return "transformer." + name.replace(".attn.", ".attn.attention.")


def _from_hf_names(hf_state: dict[str, torch.Tensor], model: GPTNeo, source: str) -> dict[str, torch.Tensor]:
    """Rename HF weights to ours, checking names and shapes; raises listing every problem."""
    expected = model.state_dict()
    by_hf_name = {_to_hf_name(name): name for name in expected}
    head = hf_state.get("lm_head.weight")
    wte = hf_state.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight; "
                         "only tied embeddings are supported")
    state, unexpected, wrong_shape = {}, [], []
    for hf_name, tensor in hf_state.items():
        if hf_name == "lm_head.weight" or hf_name.endswith(IGNORED_SUFFIXES):
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
