"""data.packing with a model that cannot keep packed sequences apart is refused before anything starts."""

import pytest

from gmt_ray.config import load_experiment
from gmt_ray.models import load_tokenizer
from gmt_ray.train.isolation import packing_problem


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(load_experiment(None, {"model.name": "arithmetic-base"}).model)


def leaky_model_dir(directory, family: str, tokenizer):
    """A tiny random-init model directory of a family that does not honour packed position ids:
    OPT (learned positions it computes itself) or Bloom (ALiBi with a mask of its own)."""
    from transformers import BloomConfig, BloomForCausalLM, OPTConfig, OPTForCausalLM

    vocab = len(tokenizer)
    if family == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                         num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=512,
                                         pad_token_id=tokenizer.pad_token_id))
    else:
        model = BloomForCausalLM(BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4,
                                             pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("attn", ["auto", "sdpa", "eager"])
def test_llama_keeps_packed_sequences_apart(tokenizer, attn):
    config = load_experiment(None, {"model.name": "arithmetic-base", "data.packing": True,
                                    "model.attn_implementation": attn})
    assert packing_problem(config, tokenizer) is None


@pytest.mark.parametrize("family, model_class", [("opt", "OPTForCausalLM"), ("bloom", "BloomForCausalLM")])
def test_a_model_whose_sequences_leak_is_refused_with_the_reason(tmp_path, tokenizer, family, model_class):
    directory = leaky_model_dir(tmp_path / family, family, tokenizer)
    problem = packing_problem(load_experiment(None, {"model.name": str(directory), "data.packing": True}), tokenizer)
    assert problem is not None and model_class in problem
    assert "does not keep packed sequences apart" in problem and "set data.packing: false" in problem


def test_the_train_command_refuses_it_with_one_message_and_exit_2(tmp_path, tokenizer, capsys):
    from gmt_ray.train.__main__ import main

    directory = leaky_model_dir(tmp_path / "opt", "opt", tokenizer)
    storage = tmp_path / "runs"
    capsys.readouterr()  # save_pretrained's progress bar
    code = main(["--set", "data.packing=true", "--set", f"model.name={directory}", "--set", f"storage_path={storage}",
                 "--set", "data.arithmetic.train_size=64"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: data.packing: model.name=") and len(err.strip().splitlines()) == 1, err
    assert not storage.exists()  # nothing started, nothing written


def test_a_model_without_flash_attention_is_refused_for_it(tmp_path, tokenizer):
    directory = leaky_model_dir(tmp_path / "bloom", "bloom", tokenizer)
    config = load_experiment(None, {"model.name": str(directory), "data.packing": True, "resources.use_gpu": True,
                                    "model.attn_implementation": "flash_attention_2"})
    problem = packing_problem(config, tokenizer)
    assert problem is not None and "has no flash attention" in problem
