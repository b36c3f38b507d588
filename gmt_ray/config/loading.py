"""Reading an experiment: YAML files and ``--set key=value`` overrides, validated at once,
every problem reported with its key and (for YAML) the file and line, as a ``ConfigError``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gmt_ray.config.schema import Experiment
from gmt_ray.errors import ConfigError

__all__ = ["load_experiment", "parse_overrides", "split_key", "to_yaml", "with_overrides"]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; experiment files mean a float (as YAML 1.2 does).

    A key given twice in one mapping is refused (plain YAML keeps the later and loses the
    earlier without a word); keys a merge (``<<: *base``) brings in may be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class refuses it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (first on line {first.start_mark.line + 1}): give each key once",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


_KEY_PART = re.compile(r"([^.\[\]]+)|\[([^\[\]]+)\]")


def split_key(dotted: str) -> tuple[str, ...]:
    """``"train.lr"`` -> ``("train", "lr")``; a bracketed part is one key, dots and all:
    ``"search.space[train.lr].high"`` -> ``("search", "space", "train.lr", "high")``.

    Raises:
        ValueError: a key that does not split cleanly (empty parts, unbalanced brackets).
    """
    parts, position = [], 0
    while position < len(dotted):
        match = _KEY_PART.match(dotted, position)
        if match is None:
            raise ValueError(f"cannot read key {dotted!r}: write nested keys as a.b.c, and a key holding "
                             "dots in brackets, e.g. search.space[train.lr].high")
        parts.append(match.group(1) or match.group(2))
        position = match.end()
        if position < len(dotted) and dotted[position] == ".":
            position += 1
            if position == len(dotted) or dotted[position] in ".[":
                raise ValueError(f"cannot read key {dotted!r}: empty part after a dot")
    if not parts:
        raise ValueError("empty key")
    return tuple(parts)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "mask.method=rmt"]`` -> ``{"train.lr": 3e-4, ...}``; values are YAML.

    Keys are dotted paths; a key that holds dots itself goes in brackets
    (``search.space[train.lr].high=1e-3``).
    """
    overrides: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {pair!r}: expected key=value, e.g. --set train.lr=3e-4")
            continue
        try:
            split_key(key.strip())
        except ValueError as error:
            problems.append(f"--set {pair!r}: {error}")
            continue
        try:
            overrides[key.strip()] = _yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            problems.append(f"--set {key}: value {raw!r} is not valid YAML ({error.problem})")
    if problems:
        raise ConfigError("\n".join(problems))
    return overrides


def _set_dotted(tree: dict, dotted: str, value: Any, defaults: dict | None = None) -> None:
    """Sets ``tree[a][b][c] = value`` for ``"a.b.c"``, making the mappings on the way.

    Raises:
        ConfigError: a key that reaches into a list (in ``tree``, or in ``defaults`` where
            ``tree`` does not have it), as ``search.methods.0`` would: a list is given whole.
    """
    node, default = tree, defaults
    parts = split_key(dotted)
    for depth, part in enumerate(parts[:-1], 1):
        child = node.get(part)
        default = default.get(part) if isinstance(default, dict) else None
        listed = child if isinstance(child, list) else default if child is None and isinstance(default, list) else None
        if listed is not None:
            whole = ".".join(parts[:depth])
            example = yaml.safe_dump(listed, default_flow_style=True, width=10**6).strip()
            if len(example) > 60 or listed == []:
                example = "[...]"
            raise ConfigError(f"--set {dotted}: {whole} is a list, and list items cannot be set by index: "
                              f"give the whole list, e.g. --set '{whole}={example}'")
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _apply_overrides(tree: dict, overrides: dict[str, Any], defaults: dict | None) -> set[tuple]:
    """Applies every override to ``tree``; the keys they set. Every key that cannot be set is
    reported at once."""
    problems = []
    for key, value in overrides.items():
        try:
            _set_dotted(tree, key, value, defaults)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("\n".join(problems))
    return {split_key(key) for key in overrides}


def with_overrides(config: BaseModel, overrides: dict[str, Any]) -> BaseModel:
    """A copy of ``config`` with dotted overrides applied and everything validated again."""
    tree = config.model_dump(mode="json")
    overridden = _apply_overrides(tree, overrides, None)
    try:
        return type(config).model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error, "overrides", {}, overridden)) from None


def _line_numbers(text: str) -> dict[tuple, int]:
    """Maps each key path in a YAML mapping document to its 1-based line."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                walk(item, (*path, index))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def load_experiment(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> Experiment:
    """Reads an experiment file, applies overrides, and validates everything at once.

    Args:
        path: a YAML file, or None for all defaults.
        overrides: ``{"train.lr": 3e-4}`` or ``["train.lr=3e-4"]``.

    Raises:
        ConfigError: naming every unknown key, wrong type or value out of range, with
            its file and line where it came from the file, or its ``--set``; an empty file.
    """
    text = ""
    where = "defaults"
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: experiment file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not an experiment file: byte {error.object[error.start]:#04x} at offset "
                              f"{error.start} is not UTF-8 text") from None
        try:
            loaded = _yaml_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML: {getattr(error, 'problem', error)}") from None
        if loaded is None:
            # Most likely a file saved empty by mistake: every default would start a sweep nobody asked for.
            raise ConfigError(f"{path}: the experiment file is empty (to run every default, give no file)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(loaded).__name__}")
        tree = loaded
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    # Where the file does not give a list, the schema's default tells a list from a mapping.
    overridden = _apply_overrides(tree, overrides or {}, Experiment().model_dump(mode="json") if overrides else None)
    try:
        return Experiment.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error, where, _line_numbers(text), overridden)) from None


# A check across options reports "key: problem; key: problem" in one message (at the level of
# the model it checks, the top for Experiment's); each part names its key.
_PART_SPLIT = re.compile(r"; (?=[A-Za-z_][^\s:;]*: )")
_PART_KEY = re.compile(r"([A-Za-z_][^\s:;]*): ")


def _overlaps(key: str, other: str) -> bool:
    """Whether one dotted key is the other or lies under it."""
    return key == other or key.startswith(f"{other}.") or other.startswith(f"{key}.")


def _describe(error: ValidationError, where: str, lines: dict[tuple, int], overridden: set[tuple]) -> str:
    # Keys are compared as dotted text: a message names "search.space.train.lr", a --set
    # splits into ("search", "space", "train.lr"), the file's lines into the same.
    set_keys = [".".join(key) for key in overridden]
    file_lines = {".".join(str(p) for p in path): line for path, line in lines.items()}
    problems = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif ("input" in item and item["type"] not in ("missing",) and not isinstance(item["input"], dict)
              and f"got {item['input']!r}" not in message):
            message = f"{message} (got {item['input']!r})"
        for part in _PART_SPLIT.split(message) if item["type"] == "value_error" else [message]:
            key, text = loc, part
            if item["type"] == "value_error" and (named := _PART_KEY.match(part)):
                # The key named in the message: whole ("eval.data.x" in eval) or under loc ("fewshot.x" in eval.lm_eval).
                name = named.group(1)
                key = name if not loc or name == loc or name.startswith(f"{loc}.") else f"{loc}.{name}"
                text = part[named.end():]
            # A --set owns a problem at its key, under it (it replaced everything below) or above it
            # (the section or option it changed); the top level alone is nobody's in particular.
            if key and any(_overlaps(key, set_key) for set_key in set_keys):
                source = "--set"
            else:
                source = next((f"{where}:{file_lines[prefix]}" for prefix in _prefixes(key) if prefix in file_lines),
                              where)
            problems.append(f"{source}: {key or '(top level)'}: {text}")
    return "\n".join(problems)


def _prefixes(key: str) -> list[str]:
    """``"a.b.c"`` -> ``["a.b.c", "a.b", "a"]``."""
    parts = key.split(".") if key else []
    return [".".join(parts[:depth]) for depth in range(len(parts), 0, -1)]


def to_yaml(config: BaseModel) -> str:
    """The fully resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

