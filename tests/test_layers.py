"""The layering docs/architecture.md describes, checked on the source: every import of a gmt_ray
module points down the layer table (or stays in its layer), only gmt_ray/ray_compat.py touches
Ray's private modules, and the masking core is plain PyTorch."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gmt_ray"

# Bottom first. A module may import modules of its own layer and of those below it. Each entry
# is a module (``config``: the package, ``eval/cli.py``: one file); the most specific wins.
LAYERS = [
    ["names.py", "errors.py"],  # the ground floor: names and exceptions, importing nothing of gmt_ray
    ["config", "progress.py", "ray_compat.py"],  # the one schema; console progress; Ray's internals
    ["masking"],  # the masking core: plain PyTorch
    ["models.py", "data"],  # models, tokenizers, data and its tokenisation
    ["eval", "hub.py"],  # evaluation (benchmarks, generation, sandbox); whether the hub can serve a run
    ["train", "tracking", "cluster.py"],  # the recipe on Ray Train; MLflow; which Ray and connecting to it
    ["preflight.py", "report"],  # everything checked before a run starts; reports from MLflow
    ["cli.py"],  # what every command shares
    # The commands, the sweep on top of everything, the integrations and the public face.
    ["sweep", "evaluate.py", "eval/cli.py", "eval/__main__.py", "train/__main__.py", "report/__main__.py",
     "integrations", "__init__.py"],
]


def _module_of(path: Path) -> str:
    """``eval/cli.py``, or the package ``eval`` for any other file in it, or ``names.py``."""
    relative = path.relative_to(PACKAGE).as_posix()
    entries = {entry for layer in LAYERS for entry in layer}
    if relative in entries:
        return relative
    top = relative.split("/")[0]
    return top if top in entries else relative


def _layer_of_entry(entry: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if entry in layer)


def _layer_of_import(name: str) -> int | None:
    """The layer of ``gmt_ray.x.y`` (None for anything outside gmt_ray, or gmt_ray itself)."""
    parts = name.split(".")
    if parts[0] != "gmt_ray" or len(parts) == 1:
        return None
    entries = {entry for layer in LAYERS for entry in layer}
    for depth in range(len(parts), 1, -1):  # the most specific entry: eval/cli.py before eval
        path = "/".join(parts[1:depth])
        for candidate in (f"{path}.py", path):
            if candidate in entries:
                return _layer_of_entry(candidate)
    raise AssertionError(f"{name} is in no layer of tests/test_layers.py: add it to the table")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against the file's package
                base = ["gmt_ray", *path.relative_to(PACKAGE).parent.parts][: len(path.relative_to(PACKAGE).parts)
                                                                                - node.level + 1]
                names.append(".".join([*base, node.module]))
            else:
                names.append(node.module)
                names += [f"{node.module}.{alias.name}" for alias in node.names if node.module == "gmt_ray"]
    return names


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_the_table():
    entries = {entry for layer in LAYERS for entry in layer}
    assert not [p for p in FILES if _module_of(p) not in entries], "add the module to LAYERS"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    mine = _layer_of_entry(_module_of(path))
    upward = [name for name in _imports(path) if (layer := _layer_of_import(name)) is not None and layer > mine]
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {mine}) imports {upward} from above it"


def test_the_ground_floor_imports_nothing_of_gmt_ray():
    for name in ("names.py", "errors.py"):
        assert not [i for i in _imports(PACKAGE / name) if i.startswith("gmt_ray")], name


@pytest.mark.parametrize("path", [p for p in FILES if p.name != "ray_compat.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_compatibility_module_touches_rays_private_modules(path):
    private = [name for name in _imports(path)
               if name.startswith(("ray._", "ray.train.v2._internal", "ray.air._internal", "ray.tune.impl"))]
    assert not private, f"{path.name} imports {private}: put it in gmt_ray/ray_compat.py"
    assert "_ot_" not in path.read_text()  # OptunaSearch's private study and trials


def test_the_masking_core_is_plain_pytorch():
    for path in (PACKAGE / "masking").rglob("*.py"):
        assert not [name for name in _imports(path) if name.split(".")[0] in ("ray", "mlflow", "optuna")], path


def test_no_module_over_500_lines_and_no_class_over_300():
    long = [(p.relative_to(PACKAGE), n) for p in FILES if (n := len(p.read_text().splitlines())) > 500]
    classes = [(p.relative_to(PACKAGE), node.name, node.end_lineno - node.lineno + 1) for p in FILES
               for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300]
    assert not long and not classes, (long, classes)
