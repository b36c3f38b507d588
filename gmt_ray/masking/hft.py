"""Half Fine-Tuning's choice of which whole matrices to freeze (Hui et al., 2024).

Per decoder layer: half of the attention projections, the FFN matrices in a 2-of-3 /
1-of-3 split alternating over a random half of the layers, and half of the norms.
Parameters outside the numbered layers (embeddings, final norm, LM head) take no part
in the selection and keep training, as in the HFT paper.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable

__all__ = ["hft_frozen_modules", "module_of"]

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
# Norms first: "post_attention_layernorm" is a norm, not an attention matrix.
_CATEGORIES = (
    ("norm", re.compile(r"norm|(?:^|\.)ln_?\w*$", re.IGNORECASE)),
    ("attention", re.compile(r"attn|attention", re.IGNORECASE)),
    ("ffn", re.compile(r"mlp|ffn|feed_forward|experts", re.IGNORECASE)),
)


def module_of(parameter_name: str) -> str:
    """The module a parameter belongs to: a weight and its bias freeze together."""
    return parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


def _category(module: str) -> str:
    for name, pattern in _CATEGORIES:
        if pattern.search(module):
            return name
    return "other"


def hft_frozen_modules(parameter_names: Iterable[str], seed: int) -> set[str]:
    """The modules HFT freezes, chosen deterministically from ``seed``.

    Args:
        parameter_names: names of the parameters eligible for masking.
        seed: the same seed gives the same choice in every process.

    Returns:
        Module names (parameter names without ``.weight``/``.bias``) to freeze.
    """
    layers: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name in parameter_names:
        match = _LAYER.search(name)
        if match is None:
            continue
        module = module_of(name)
        layers[int(match.group(1))][_category(module)].add(module)

    rng = random.Random(seed)
    layer_ids = sorted(layers)
    # An odd-sized category (3 FFN matrices) cannot be halved within a layer: freeze the
    # larger half in a random half of the layers and the smaller half in the others.
    larger_half_layers = set(rng.sample(layer_ids, len(layer_ids) // 2))
    frozen: set[str] = set()
    for layer in layer_ids:
        for category in sorted(layers[layer]):
            modules = sorted(layers[layer][category])
            count = len(modules) // 2
            if len(modules) % 2 and layer in larger_half_layers:
                count += 1
            frozen.update(rng.sample(modules, count))
    return frozen
