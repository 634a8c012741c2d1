"""The import layers (DESIGN.md: data < models < tasks < train < eval < cli), read from the source.

Every ``import`` and ``from ... import`` of every module counts, at any depth (imports inside
functions included), relative ones resolved against the importing module. Layers:

- bottom: ``lcplm`` (the package's ``__init__``), ``lcplm.errors``, ``lcplm.files``,
  ``lcplm.config``, ``lcplm.registry``: imported by every layer, importing no other layer. The
  registries name higher-layer classes only as ``"module:Class"`` strings, imported on use;
- data, models, tasks, train, eval (with ``lcplm.embed``), cli (with ``lcplm.__main__``): each
  imports the bottom, its own layer and the layers below it;
- ``lcplm_kernels`` (below everything) imports only torch, triton, the standard library and itself;
- ``lcplm.models`` imports no Lightning (models are plain nn.Modules); ``lcplm/models/hf/`` is code
  shipped inside model directories and imports nothing of lcplm.

Imports through ``importlib`` (the registries, lcplm_kernels' optional mamba-ssm) are not seen here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDER = ["bottom", "data", "models", "tasks", "train", "eval", "cli"]
BOTTOM = {"lcplm", "lcplm.errors", "lcplm.files", "lcplm.config", "lcplm.registry"}
SPECIAL = {"lcplm.embed": "eval", "lcplm.__main__": "cli"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the file; ``from X import y`` yields
    ``X.y`` too, since ``y`` may be a submodule (``from lcplm import cli``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*"]
    return found


def layer_of(module: str) -> str | None:
    """The layer of an lcplm module (None outside lcplm, or a name that is no module, like
    ``lcplm.config.load_config``: its module's layer is what counts and is found first)."""
    if module in SPECIAL:
        return SPECIAL[module]
    if module in BOTTOM:
        return "bottom"
    parts = module.split(".")
    if parts[0] != "lcplm" or len(parts) < 2:
        return None
    if parts[1] in ORDER:
        return parts[1]
    return layer_of(".".join(parts[:2])) if len(parts) > 2 else None


def lcplm_modules() -> list[tuple[Path, str]]:
    return [(p, module_name(p, REPO)) for p in sorted((REPO / "lcplm").rglob("*.py"))]


def layering_violations(files: list[tuple[Path, str]], root: Path = REPO) -> list[str]:
    bad = []
    for path, module in files:
        mine = layer_of(module)
        assert mine is not None, f"{module}: not in any layer; add it to tests/test_layers.py"
        for line, target in imports(path, module):
            theirs = layer_of(target)
            if theirs is None and target.split(".")[0] == "lcplm" and "." in target:
                theirs = layer_of(target.rpartition(".")[0])
            where = f"{path.relative_to(root)}:{line}"
            if theirs is not None and ORDER.index(theirs) > ORDER.index(mine) and not (bad and bad[-1].startswith(where + ":")):
                bad.append(f"{where}: {mine} imports {target} ({theirs})")  # once per import statement
    return bad


def test_every_module_imports_only_its_own_layer_and_those_below():
    files = lcplm_modules()
    assert len(files) > 50 and {layer_of(m) for _, m in files} == set(ORDER)
    violations = layering_violations(files)
    assert not violations, "\n".join(violations)


def test_the_layer_check_finds_an_upward_import(tmp_path):
    """A data module importing a model, a config importing models lazily, a task importing eval through
    a relative import: all found."""
    root = tmp_path
    (root / "lcplm" / "data").mkdir(parents=True)
    (root / "lcplm" / "tasks").mkdir()
    files = {
        "lcplm/data/reader.py": "from lcplm.models.bimamba import BiMambaLM\n",
        "lcplm/config.py": "def f():\n    from lcplm import models\n",
        "lcplm/tasks/loss.py": "from ..eval import metrics\n",
        "lcplm/tasks/fine.py": "from . import loss\nfrom lcplm.data import reader\nfrom lcplm.errors import UserError\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    found = layering_violations([(root / rel, module_name(root / rel, root)) for rel in files], root)
    assert found == ["lcplm/data/reader.py:1: data imports lcplm.models.bimamba (models)",
                     "lcplm/config.py:2: bottom imports lcplm.models (models)",
                     "lcplm/tasks/loss.py:1: tasks imports lcplm.eval (eval)"], found


def test_lcplm_kernels_imports_only_torch_triton_and_the_standard_library():
    root = REPO / "kernels"
    allowed = {"torch", "triton", "lcplm_kernels", "__future__"} | set(sys.stdlib_module_names)
    bad = []
    for path in sorted((root / "lcplm_kernels").rglob("*.py")):
        for line, target in imports(path, module_name(path, root)):
            if target.split(".")[0] not in allowed:
                bad.append(f"{path.relative_to(REPO)}:{line}: {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("forbidden", ["lightning", "pytorch_lightning", "lcplm"])
def test_models_import_no_lightning_and_shipped_modeling_code_no_lcplm(forbidden):
    bad = []
    for path, module in lcplm_modules():
        shipped = module.startswith("lcplm.models.hf")
        if module.startswith("lcplm.models") and (forbidden != "lcplm" or shipped):
            for line, target in imports(path, module):
                if target.split(".")[0] == forbidden and not (shipped and target.startswith(module.rpartition(".")[0])):
                    bad.append(f"{path.relative_to(REPO)}:{line}: {target}")
    assert not bad, "\n".join(bad)
