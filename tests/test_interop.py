import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sr_lightning.interop import config_from_hf, load_hf_gpt_neo, save_hf_gpt_neo
from sr_lightning.model import GPTNeo, ModelConfig

VOCAB = 1000  # the tiny shape with a small vocabulary keeps these tests fast


def hf_tiny_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPTNeoConfig(
        vocab_size=VOCAB, max_position_embeddings=128, hidden_size=256, num_layers=4, num_heads=8,
        attention_types=[[["global"], 4]], bos_token_id=0, eos_token_id=0,
    )
    model = transformers.GPTNeoForCausalLM(config).eval()
    with torch.no_grad():  # random, non-trivial LayerNorm and bias values, so a mapping slip shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def our_logits(model: GPTNeo, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.lm_head(model(ids, **kwargs))


def hf_logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def random_ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


def save_as_pytorch_bin(hf_model, out_dir) -> None:
    """The original checkpoints' layout: config.json + pytorch_model.bin with old mask buffers."""
    hf_model.config.save_pretrained(out_dir)
    state = dict(hf_model.state_dict())
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    for i in range(hf_model.config.num_layers):
        state[f"transformer.h.{i}.attn.attention.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool)
        state[f"transformer.h.{i}.attn.attention.masked_bias"] = torch.tensor(-1e9)
    torch.save(state, out_dir / "pytorch_model.bin")


@pytest.mark.parametrize("layout", ["safetensors", "pytorch_bin"])
def test_import_gives_the_same_logits(tmp_path, layout):
    hf = hf_tiny_model()
    if layout == "safetensors":
        hf.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
    else:
        save_as_pytorch_bin(hf, tmp_path)
    ours = load_hf_gpt_neo(tmp_path).eval()
    assert ours.config == ModelConfig(vocab_size=VOCAB, n_positions=128, hidden_size=256, n_layers=4, n_heads=8,
                                      embed_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
    ids = random_ids(2, 20)
    assert torch.allclose(our_logits(ours, ids), hf_logits(hf, ids), atol=1e-4)


def test_import_matches_with_right_and_left_padding(tmp_path):
    hf = hf_tiny_model()
    hf.save_pretrained(tmp_path)
    ours = load_hf_gpt_neo(tmp_path).eval()
    ids = random_ids(2, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 11:] = False  # right padding: ours needs no mask, causality suffices
    expected = hf_logits(hf, ids, attention_mask=mask.long())
    assert torch.allclose(our_logits(ours, ids)[mask], expected[mask], atol=1e-4)

    left = torch.ones(2, 16, dtype=torch.bool)
    left[0, :5] = False  # left padding: mask plus positions that start at the first real token
    positions = (left.long().cumsum(1) - 1).clamp(min=0)
    expected = hf_logits(hf, ids, attention_mask=left.long(), position_ids=positions)
    got = our_logits(ours, ids, attention_mask=left, position_ids=positions)
    assert torch.allclose(got[left], expected[left], atol=1e-4)


def test_export_loads_in_transformers_and_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    ours = GPTNeo(ModelConfig(vocab_size=VOCAB, n_positions=128, hidden_size=256, n_layers=4, n_heads=8)).eval()
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "WordLevel"}})
    save_hf_gpt_neo(ours, tmp_path, tokenizer_json=tokenizer, bos_id=0, eos_id=1, pad_id=1)
    assert (tmp_path / "tokenizer.json").read_text() == tokenizer
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["attention_types"] == [[["global"], 4]] and hf_config["model_type"] == "gpt_neo"
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"], hf_config["pad_token_id"]) == (0, 1, 1)

    hf = transformers.GPTNeoForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(2, 20)
    assert torch.allclose(hf_logits(hf, ids), our_logits(ours, ids), atol=1e-4)
    assert torch.equal(hf.lm_head.weight, ours.wte.weight)

    again = load_hf_gpt_neo(tmp_path)
    assert again.config == ours.config
    for name, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def local_attention_config() -> dict:
    return {"vocab_size": 50, "max_position_embeddings": 16, "hidden_size": 8, "num_layers": 2, "num_heads": 2,
            "attention_types": [[["global", "local"], 1]], "activation_function": "gelu_new"}


def test_local_attention_is_refused_naming_file_and_setting(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(local_attention_config()))
    with pytest.raises(ValueError, match=r"config\.json.*global.*'local'"):
        load_hf_gpt_neo(tmp_path)


def test_config_mapping_and_other_refusals():
    hf = {**local_attention_config(), "attention_types": [[["global"], 2]], "intermediate_size": 24,
          "layer_norm_epsilon": 1e-6, "embed_dropout": 0.2, "attention_dropout": 0.3, "resid_dropout": 0.4}
    assert config_from_hf(hf) == ModelConfig(vocab_size=50, n_positions=16, hidden_size=8, n_layers=2, n_heads=2,
                                             intermediate_size=24, embed_dropout=0.2, attn_dropout=0.3,
                                             resid_dropout=0.4, layer_norm_eps=1e-6)
    with pytest.raises(ValueError, match="activation_function"):
        config_from_hf({**hf, "activation_function": "relu"})
    with pytest.raises(ValueError, match="num_layers=3"):
        config_from_hf({**hf, "num_layers": 3})


def test_missing_and_misshapen_weights_are_listed(tmp_path):
    torch.manual_seed(0)
    save_hf_gpt_neo(GPTNeo(ModelConfig(vocab_size=50, n_positions=16, hidden_size=8, n_layers=2, n_heads=2)),
                    tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.wpe.weight"] = torch.zeros(17, 8)
    state["transformer.h.0.attn.attention.q_proj.bias"] = torch.zeros(8)
    save_file(state, weights)
    with pytest.raises(ValueError) as error:
        load_hf_gpt_neo(tmp_path)
    message = str(error.value)
    assert "model.safetensors" in message
    assert "missing: ['transformer.h.1.mlp.c_fc.bias']" in message
    assert "unexpected: ['transformer.h.0.attn.attention.q_proj.bias']" in message
    assert "transformer.wpe.weight: (17, 8) in file, (16, 8) expected" in message


def test_missing_weights_file_is_reported(tmp_path):
    config = {**local_attention_config(), "attention_types": [[["global"], 2]]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pytorch_model.bin"):
        load_hf_gpt_neo(tmp_path)
