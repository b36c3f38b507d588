"""Whether a model keeps packed sequences apart, checked before a run with ``data.packing`` starts.

Packing is exact only if every sequence of a packed row sees nothing of the others. That
holds where the model's attention builds its mask from the position ids
(transformers' ``masking_utils``) and nothing else carries state along the row; it fails
for recurrent and hybrid layers (Mamba, Jamba, RecurrentGemma, Qwen3-Next's linear
attention), for ALiBi models that build their own mask (Bloom), and for models that ignore
the position ids they are given (OPT). Rather than a list of names, the check asks the
model itself: a small random-init model of the same architecture (same class and config,
narrower layers) computes logits for a few sequences alone and packed as training packs
them (``gmt_ray.data.packing``), and they must agree.

Flash attention cannot run on the CPU where the check runs: the model is checked with
transformers' default attention instead, which covers everything but the attention kernel;
the kernel's side is transformers' varlen path on one flattened row (``collate_flat``).
"""

from __future__ import annotations

import copy

import torch

from gmt_ray.config import Experiment
from gmt_ray.data.packing import collate_rows, plan_step
from gmt_ray.data.tokens import collate

__all__ = ["packing_problem"]

# Widths of the model the check builds (a 7B config becomes a few million parameters, most of
# them the embedding): only attributes the config already has are changed.
_PROBE_WIDTHS = {"hidden_size": 64, "n_embd": 64, "word_embed_proj_dim": 64, "intermediate_size": 128, "ffn_dim": 128,
                 "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "num_attention_heads": 4,
                 "n_head": 4, "head_dim": 16}
_PROBE_LENGTHS = [11, 6, 9, 4, 7, 3]  # into rows of 16 tokens, two micro-batches: rows of 2-3 sequences
_PROBE_CAPACITY = 16


def packing_problem(config: Experiment, tokenizer) -> str | None:
    """Why ``config``'s model cannot train on packed rows; None when it can.

    Args:
        tokenizer: the run's tokenizer (a ``tiny`` model's vocabulary comes from it).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from gmt_ray.models import model_config

    m = config.model
    name = f"model.name={m.name}"
    try:
        architecture = model_config(m, tokenizer)
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(architecture)]
    except (KeyError, OSError, ValueError) as error:
        return f"data.packing: cannot read the architecture of {name} to check that it keeps packed sequences apart ({error})"
    if m.attn_implementation.startswith("flash_attention") and not getattr(model_class, "_supports_flash_attn", False):
        return (f"data.packing: {name} ({model_class.__name__}) has no flash attention, so model.attn_implementation="
                f"{m.attn_implementation} cannot run its packed rows as separate sequences: use auto, sdpa or eager")
    attn = m.attn_implementation if m.attn_implementation in ("sdpa", "eager") else None
    try:
        difference, scale = _leak(_narrowed(architecture), attn)
    except Exception as error:  # noqa: BLE001 - any failure means the check could not vouch for the model
        return (f"data.packing: could not check that {name} ({model_class.__name__}) keeps packed sequences apart: "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; set data.packing: false")
    if difference > 1e-4 * max(scale, 1.0):
        return (f"data.packing: {name} ({model_class.__name__}, {attn or 'default'} attention) does not keep packed "
                f"sequences apart: a sequence's logits change by up to {difference:.2g} when other sequences share its "
                "row (its layers see across the boundaries the position ids mark), so packed training would not be the "
                "padded training; set data.packing: false for this model")
    return None


def _narrowed(architecture):
    """A copy of the config with narrow layers (same class, layer count and vocabulary)."""
    probe = copy.deepcopy(architecture)
    heads = getattr(architecture, "num_attention_heads", None)
    kv_heads = getattr(architecture, "num_key_value_heads", None)
    widths = dict(_PROBE_WIDTHS)
    if kv_heads is not None:  # grouped-query attention stays grouped
        widths["num_key_value_heads"] = 2 if heads and kv_heads < heads else 4
    if max(getattr(architecture, "hidden_size", 0) or 0, getattr(architecture, "n_embd", 0) or 0) <= 256:
        return probe  # small already (the tiny and arithmetic-base models)
    for key, value in widths.items():
        if isinstance(getattr(probe, key, None), int):
            try:
                setattr(probe, key, value)
            except AttributeError:  # a derived property
                pass
    return probe


@torch.no_grad()
def _leak(architecture, attn: str | None) -> tuple[float, float]:
    """(the largest logit difference between sequences alone and packed, the logits' scale)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(architecture, attn_implementation=attn, dtype=torch.float32).eval()
        vocab = min(int(architecture.get_text_config().vocab_size), 1000)
        examples = [(torch.randint(0, vocab, (length,)).tolist(), 1) for length in _PROBE_LENGTHS]
    pad_id = 0
    difference = scale = 0.0
    for rows in plan_step(_PROBE_LENGTHS, 2, _PROBE_CAPACITY):
        packed = model(**collate_rows(examples, rows, pad_id), use_cache=False).logits
        for r, row in enumerate(rows):
            offset = 0
            for index in row:
                length = len(examples[index][0])
                alone = model(**{k: v for k, v in collate([examples[index]], pad_id).items() if k != "labels"},
                              use_cache=False).logits[0]
                difference = max(difference, float((packed[r, offset : offset + length] - alone).abs().max()))
                scale = max(scale, float(alone.abs().max()))
                offset += length
    return difference, scale
