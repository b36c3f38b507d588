"""GradientMask refuses models with PEFT adapters, with the reason; real peft LoRA models."""

import pytest
import torch

from gmt_ray import GradientMask
from gmt_ray.masking.adapters import adapter_module_names

peft = pytest.importorskip("peft")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def lora():
    return peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])


@pytest.mark.parametrize("method", ["gmt", "rmt", "hft"])
def test_a_peft_model_is_refused_with_the_reason(method):
    model = peft.get_peft_model(tiny_llama(), lora())
    with pytest.raises(ValueError, match=r"PEFT adapters .*low-rank factors A and B.*merge_and_unload") as error:
        GradientMask(model, method=method, mask_ratio=0.5)
    assert "q_proj" in str(error.value) or "the model itself" in str(error.value)


def test_adapter_layers_injected_without_the_peft_wrapper_are_refused_too():
    # transformers' model.add_adapter does the same, but needs a newer peft than PyPI has here.
    model = peft.inject_adapter_in_model(lora(), tiny_llama())
    assert any("self_attn.q_proj" in name for name in adapter_module_names(model))
    with pytest.raises(ValueError, match="PEFT adapters"):
        GradientMask(model, method="gmt", mask_ratio=0.5)


def test_sft_masks_nothing_and_is_allowed_with_adapters():
    model = peft.get_peft_model(tiny_llama(), lora())
    mask = GradientMask(model, method="sft")
    assert mask.parameters and all("lora_" in name for name in mask.parameters)


def test_a_plain_model_has_no_adapter_modules():
    assert adapter_module_names(tiny_llama()) == []


def test_the_trainer_callback_refuses_a_peft_model_when_the_trainer_is_built(tmp_path):
    from transformers import Trainer, TrainingArguments

    from gmt_ray.integrations.transformers import GradientMaskCallback

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    with pytest.raises(ValueError, match="PEFT adapters"):
        Trainer(model=peft.get_peft_model(tiny_llama(), lora()), args=args, train_dataset=[],
                callbacks=[GradientMaskCallback(method="gmt", mask_ratio=0.3)])
