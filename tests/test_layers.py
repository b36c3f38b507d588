"""The layering the README promises, checked on the source: imports point down the layers,
and only gmt_ray/ray_compat.py touches Ray's private modules."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gmt_ray"
BELOW_THE_SWEEP = ["train", "eval", "data", "masking", "report", "tracking", "config.py", "models.py", "hub.py",
                   "metrics.py", "cli.py", "progress.py", "names.py", "errors.py", "cluster.py", "preflight.py"]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module if node.level == 0 else f"<relative>.{node.module}")
    return names


def _files(*parts: str) -> list[Path]:
    files = []
    for part in parts:
        target = PACKAGE / part
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return files


@pytest.mark.parametrize("path", _files(*BELOW_THE_SWEEP), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_below_the_sweep_imports_it(path):
    assert not [name for name in _imports(path) if name.startswith(("gmt_ray.sweep", "<relative>.sweep"))]


@pytest.mark.parametrize("path", [p for p in _files(".") if p.name != "ray_compat.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_compatibility_module_touches_rays_private_modules(path):
    private = [name for name in _imports(path)
               if name.startswith(("ray._", "ray.train.v2._internal", "ray.air._internal", "ray.tune.impl"))]
    assert not private, f"{path.name} imports {private}: put it in gmt_ray/ray_compat.py"
    assert "_ot_" not in path.read_text()  # OptunaSearch's private study and trials


def test_the_masking_core_is_plain_pytorch():
    for path in _files("masking"):
        assert not [name for name in _imports(path) if name.split(".")[0] in ("ray", "mlflow", "optuna")], path
