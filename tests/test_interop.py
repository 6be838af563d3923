import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from sr_lightning.data.format import SPECIAL_TOKENS, pair_from_record
from sr_lightning.data.tokenizer import SRTokenizer, train_domain_tokenizer
from sr_lightning.interop import (
    config_from_hf,
    load_for_fine_tuning,
    load_hf_directory,
    load_hf_gpt_neo,
    save_hf_gpt_neo,
)
from sr_lightning.model import GPTNeo, ModelConfig
from sr_lightning.module import OneStepLM
from tests.hf_original import original_checkpoint, random_gpt_neo
from tests.test_format import fixture_lines

VOCAB = 1000  # the tiny shape with a small vocabulary keeps most of these tests fast


def hf_tiny_model():
    return random_gpt_neo(vocab_size=VOCAB, n_positions=128)


def our_logits(model: GPTNeo, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.lm_head(model(ids, **kwargs))


def hf_logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def random_ids(batch: int, length: int, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(3))


def save_as_pytorch_bin(hf_model, out_dir) -> None:
    """The original checkpoints' layout: config.json + pytorch_model.bin with old mask buffers."""
    hf_model.config.save_pretrained(out_dir)
    state = dict(hf_model.state_dict())
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    for i in range(hf_model.config.num_layers):
        state[f"transformer.h.{i}.attn.attention.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool)
        state[f"transformer.h.{i}.attn.attention.masked_bias"] = torch.tensor(-1e9)
    torch.save(state, out_dir / "pytorch_model.bin")


def assert_same_logits(hf, ours: GPTNeo, vocab: int) -> None:
    """Ours matches transformers to 1e-4 without padding, with right padding and with left padding."""
    ids = random_ids(2, 16, vocab)
    assert torch.allclose(our_logits(ours, ids), hf_logits(hf, ids), atol=1e-4)

    right = torch.ones(2, 16, dtype=torch.bool)
    right[1, 11:] = False  # ours needs no mask: causality keeps real tokens from the pads after them
    expected = hf_logits(hf, ids, attention_mask=right.long())
    assert torch.allclose(our_logits(ours, ids)[right], expected[right], atol=1e-4)

    left = torch.ones(2, 16, dtype=torch.bool)
    left[0, :5] = False  # a mask plus positions that start at the first real token
    positions = (left.long().cumsum(1) - 1).clamp(min=0)
    expected = hf_logits(hf, ids, attention_mask=left.long(), position_ids=positions)
    got = our_logits(ours, ids, attention_mask=left, position_ids=positions)
    assert torch.allclose(got[left], expected[left], atol=1e-4)


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
                                      embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
    assert_same_logits(hf, ours, VOCAB)


def test_original_size_checkpoint_and_tokenizer_import(tmp_path):
    hf = original_checkpoint(tmp_path)
    ours, tokenizer = load_hf_directory(tmp_path)
    # 50,261 x 256 + 2,048 x 256 + 4 x 788,992 per block + 512 (ln_f): SPEC's 16.55 M
    assert ours.num_parameters() == 12_866_816 + 524_288 + 4 * 788_992 + 512 == 16_547_584
    assert [tokenizer.ids[t] for t in SPECIAL_TOKENS] == [50256, 50257, 50258, 50259, 50260]
    assert_same_logits(hf, ours.eval(), 50261)


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
    with pytest.raises(ValueError, match="model_type must be 'gpt_neo', got 'gpt2'"):
        config_from_hf({**hf, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="config.json: hidden_size 8 is not divisible by n_heads 3"):
        config_from_hf({**hf, "num_heads": 3})


def test_missing_keys_take_transformers_defaults():
    """GPT-Neo's defaults: 24 layers alternating global/local attention, which we refuse."""
    with pytest.raises(ValueError, match=r"\['global', 'local', 'global'.*num_layers=24"):
        config_from_hf({"hidden_size": 64, "num_heads": 4})
    config = config_from_hf({"num_layers": 1, "attention_types": [[["global"], 1]]})
    assert (config.vocab_size, config.n_positions, config.hidden_size, config.n_heads) == (50257, 2048, 2048, 16)
    assert (config.embed_dropout, config.attn_dropout, config.resid_dropout, config.mlp_size) == (0, 0, 0, 8192)


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
    (tmp_path / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read the weights"):
        load_hf_gpt_neo(tmp_path)


def test_not_a_checkpoint_directory_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face GPT-Neo directory"):
        load_hf_gpt_neo(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_hf_gpt_neo(tmp_path)


@pytest.fixture
def small_checkpoint(tmp_path):
    """An HF directory whose tokenizer (300 entries) differs from the default domain one (1,024)."""
    texts = [pair_from_record(json.loads(line)).text for line in fixture_lines()]
    tokenizer = SRTokenizer(train_domain_tokenizer(texts, vocab_size=300))
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, n_positions=64, hidden_size=32, n_layers=2, n_heads=4)
    save_hf_gpt_neo(GPTNeo(config), tmp_path / "ckpt", tokenizer_json=tokenizer.to_str())
    return tmp_path / "ckpt"


def test_directory_tokenizer_is_found_replaced_or_refused(small_checkpoint, tmp_path):
    model, tokenizer = load_hf_directory(small_checkpoint)
    assert tokenizer.vocab_size == model.config.vocab_size == 300
    (tmp_path / "other.json").write_text((small_checkpoint / "tokenizer.json").read_text())
    (small_checkpoint / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt: no tokenizer\.json"):
        load_hf_directory(small_checkpoint)
    assert load_hf_directory(small_checkpoint, tmp_path / "other.json")[1].vocab_size == 300
    (tmp_path / "big.json").write_text(SRTokenizer.default().to_str())
    with pytest.raises(ValueError,
                       match=r"big\.json: the tokenizer has 1024 entries but the model's vocabulary only 300"):
        load_hf_directory(small_checkpoint, tmp_path / "big.json")


def test_fine_tuning_import_applies_dropout_and_ignores_shape_overrides(small_checkpoint, caplog):
    imported = load_hf_gpt_neo(small_checkpoint)
    model, tokenizer = load_for_fine_tuning(small_checkpoint, overrides={"embed_dropout": 0.0, "n_positions": 1024,
                                                                         "hidden_size": 32})
    assert model.config == replace(imported.config, embed_dropout=0.0)
    assert "ignoring model_overrides {'n_positions': 1024}" in caplog.text
    for name, tensor in imported.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with pytest.raises(TypeError, match="n_layer"):
        load_for_fine_tuning(small_checkpoint, overrides={"n_layer": 3})
    with pytest.raises(ValueError, match="vocabulary has 300 entries, the tokenizer's 1024"):
        load_for_fine_tuning(small_checkpoint, SRTokenizer.default())


def test_lightning_module_starts_from_the_directory_and_checkpoints_rebuild_it(small_checkpoint):
    lm = OneStepLM(preset="micro", model_overrides={"resid_dropout": 0.0}, init_from=str(small_checkpoint))
    imported = load_hf_gpt_neo(small_checkpoint)
    assert lm.tokenizer.to_str() == SRTokenizer.from_file(small_checkpoint / "tokenizer.json").to_str()
    assert lm.model.config == replace(imported.config, resid_dropout=0.0)
    for name, tensor in imported.state_dict().items():
        assert torch.equal(lm.model.state_dict()[name], tensor), name
    # A checkpoint re-creates the module from its hyperparameters, without the directory.
    assert lm.hparams.init_from is None
    rebuilt = OneStepLM(**lm.hparams)
    assert rebuilt.model.config == lm.model.config
    rebuilt.load_state_dict(lm.state_dict())
    with pytest.raises(ValueError, match="vocabulary has 300 entries, the tokenizer's 1024"):
        OneStepLM(init_from=str(small_checkpoint), tokenizer_json=SRTokenizer.default().to_str())


def test_the_originals_e2e_wrapper_layout_round_trips_with_the_same_logits(tmp_path):
    """``WithEmbedderForCausalLM``: ``wrapped.<GPTNeoForCausalLM key>`` + ``input_embedder.mlp.{0,2}.*``,
    config.json with ``embedder_class``; its forward is GPT-Neo on cat(embedder(points), wte(ids))."""
    transformers = pytest.importorskip("transformers")
    from sr_lightning.embedders import point_features

    torch.manual_seed(2)
    config = ModelConfig(vocab_size=VOCAB, n_positions=128, hidden_size=64, n_layers=2, n_heads=4,
                         input_embedder="e2e", embedder_max_points=8)
    ours = GPTNeo(config).eval()
    save_hf_gpt_neo(ours, tmp_path)
    written = load_file(str(tmp_path / "model.safetensors"))
    assert "wrapped.transformer.wte.weight" in written and "input_embedder.mlp.2.bias" in written
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert (hf_config["embedder_class"], hf_config["embedder_max_points"]) == ("E2EPointEmbedder", 8)

    again = load_hf_gpt_neo(tmp_path).eval()
    assert again.config == config
    ids, X, y = random_ids(2, 12), torch.randn(2, 5, 3), torch.randn(2, 5)
    batch = {"points_X": X, "points_y": y, "points_mask": torch.ones(2, 5, dtype=torch.bool)}
    with torch.no_grad():
        logits = our_logits(ours, ids, prefix=ours.point_prefix(batch))
        assert torch.allclose(our_logits(again, ids, prefix=again.point_prefix(batch)), logits, atol=1e-6)
        # The reference: transformers' GPT-Neo on the original's inputs_embeds.
        lm_config = {k: v for k, v in hf_config.items() if not k.startswith("embedder_")}
        hf = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig.from_dict(lm_config)).eval()
        hf.load_state_dict({k.removeprefix("wrapped."): v for k, v in written.items() if k.startswith("wrapped.")},
                           strict=False)
        hf.tie_weights()
        features = torch.zeros(2, 8, 11)
        features[:, :5] = point_features(X, y, 10)
        mlp = torch.nn.Sequential(torch.nn.Linear(11, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64))
        mlp.load_state_dict({k.removeprefix("input_embedder.mlp."): v for k, v in written.items()
                             if k.startswith("input_embedder.")})
        embeds = torch.cat([mlp(features), hf.transformer.wte(ids)], dim=1)
        reference = hf(inputs_embeds=embeds).logits[:, 8:]
    assert torch.allclose(logits, reference, atol=1e-4)


def test_an_original_set_embedder_is_refused_in_one_line():
    hf = {"model_type": "gpt_neo", "num_layers": 2, "attention_types": [[["global"], 2]], "hidden_size": 64,
          "num_heads": 4, "embedder_class": "SetPointEmbedder"}
    with pytest.raises(ValueError, match="embedder_class 'SetPointEmbedder' cannot be imported"):
        config_from_hf(hf, "x/config.json")


def test_fine_tuning_an_original_e2e_directory_keeps_its_embedder_in_the_checkpoint(tmp_path):
    tokenizer = SRTokenizer.default()
    torch.manual_seed(4)
    original = GPTNeo(ModelConfig(vocab_size=tokenizer.vocab_size, n_positions=256, hidden_size=64, n_layers=2,
                                  n_heads=4, input_embedder="e2e", embedder_max_points=8))
    save_hf_gpt_neo(original, tmp_path / "checkpoint-10", tokenizer_json=tokenizer.to_str())
    lm = OneStepLM(init_from=str(tmp_path / "checkpoint-10"))
    assert lm.model.config.input_embedder == "e2e" and lm.task.max_points == 8 and lm.task.max_length == 248
    assert torch.equal(lm.model.input_embedder.mlp[0].weight, original.input_embedder.mlp[0].weight)
    rebuilt = OneStepLM(**lm.hparams)  # what load_from_checkpoint builds before loading the weights
    assert rebuilt.model.config == lm.model.config
    assert rebuilt.model.state_dict().keys() == lm.model.state_dict().keys()
    with pytest.raises(ValueError, match="reads 'e2e' points, not 'set'"):
        OneStepLM(init_from=str(tmp_path / "checkpoint-10"), input_embedder="set")
