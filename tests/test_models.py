"""Model building on the meta device and reading weight files a few tensors at a time."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gmt_ray.config import ModelConfig
from gmt_ray.data.tokens import train_tiny_tokenizer
from gmt_ray.models import WeightFiles, build_model, weight_source


def _llama(tied=False):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied))


def test_weights_stream_from_files_only(tmp_path):
    _llama().save_pretrained(tmp_path / "model")
    assert weight_source(ModelConfig(name="tiny"), None) is None  # random init: built whole
    assert weight_source(ModelConfig(name="tiny"), str(tmp_path / "model")) == str(tmp_path / "model")
    assert weight_source(ModelConfig(name=str(tmp_path / "model")), None) == str(tmp_path / "model")
    assert weight_source(ModelConfig(name="org/some-model"), None) == "org/some-model"  # from the hub
    (tmp_path / "q.gguf").write_bytes(b"")
    assert weight_source(ModelConfig(name=str(tmp_path / "q.gguf")), str(tmp_path / "model")) is None
    with pytest.raises(FileNotFoundError):
        weight_source(ModelConfig(name="tiny"), str(tmp_path / "nowhere"))


def test_a_meta_model_has_the_whole_models_names_shapes_and_dtypes():
    tokenizer = train_tiny_tokenizer(["1 + 2 = 3. Ava has 4 apples."] * 20, 280)
    config = ModelConfig(name="tiny")
    whole = build_model(config, tokenizer, torch.bfloat16)
    meta = build_model(config, tokenizer, torch.bfloat16, meta=True)
    assert all(t.is_meta for t in meta.state_dict().values())
    assert {n: (t.shape, t.dtype) for n, t in meta.state_dict().items()} == {
        n: (t.shape, t.dtype) for n, t in whole.state_dict().items()}


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "checkpoint"])
def test_weight_files_read_what_was_saved(tmp_path, layout):
    model = _llama(tied=True)
    expected = model.state_dict()
    if layout == "checkpoint":
        (tmp_path / "m").mkdir()
        torch.save({"model": expected, "optimizer": {}}, tmp_path / "m" / "model.pt")
    else:
        model.save_pretrained(tmp_path / "m", max_shard_size="20KB" if layout == "sharded" else "5GB")
    assert any((tmp_path / "m").glob("*.index.json")) == (layout == "sharded")
    files = WeightFiles(tmp_path / "m")
    names = files.names()
    # save_pretrained stores a tied head once; a state dict has both names
    assert ("lm_head.weight" in names) == (layout == "checkpoint")
    shapes = files.shapes()
    assert shapes.keys() == set(names) and all(shapes[n] == tuple(expected[n].shape) for n in names)
    first, last = names[:2], names[-1:]
    for chunk in (first, last):
        read = files.read(chunk)
        assert read.keys() == set(chunk) and all(torch.equal(read[n], expected[n]) for n in chunk)


def test_a_directory_without_weights_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.pt, model.safetensors"):
        WeightFiles(tmp_path)


def test_the_shipped_arithmetic_base_knows_its_pretraining_worlds_and_not_the_quick_starts():
    """The quick start's premise: a pretrained model that a fine-tuning task can still teach."""
    from gmt_ray.config import EvalConfig
    from gmt_ray.data.arithmetic import generate_arithmetic
    from gmt_ray.eval.suite import evaluate_model
    from gmt_ray.models import load_tokenizer

    config = ModelConfig(name="arithmetic-base")
    tokenizer = load_tokenizer(config)
    model = build_model(config, tokenizer, torch.float32).eval()
    accuracy = {}
    for world in ("money", "bus"):  # money was in its pretraining; bus is the quick start's task
        test = generate_arithmetic(0, 0, 64, max_ops=2, seed=7, domains=[world])["test"]
        metrics = evaluate_model(model, tokenizer, EvalConfig(benchmarks=["arithmetic"], max_new_tokens=56,
                                                              batch_size=64), test_records=test, template="auto")
        accuracy[world] = metrics["arithmetic_accuracy"]
    assert accuracy["money"] >= 0.8 and accuracy["bus"] <= 0.3, accuracy
