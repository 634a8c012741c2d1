"""Every config key is read by some code: a key nothing reads is a promise the suite does not keep.

The schemas are every dataclass a YAML is validated against: the ``schema=`` of each
``load_config`` call in the package, the polymorphic sections (model and data registries), and
the dataclasses nested in them. A key counts as read where the package source loads it as an
attribute (``cfg.key``) or names it in ``getattr(obj, "key")`` (or loops ``getattr`` over a tuple
of names), outside ``__post_init__``
(validating a value is not using it). Attribute names are not tied to their objects here, so a
key that shares its name with another attribute passes; a key read by no code at all fails.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import typing
from pathlib import Path

from lcplm.config import SECTION_SCHEMAS, PretrainConfig, _import

PACKAGE = Path(importlib.import_module("lcplm").__file__).resolve().parent


def _package_modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "hf" in path.relative_to(PACKAGE).parts[:-1]:
            continue  # the shipped modeling code reads exported config.json, not experiment configs
        module = ".".join(("lcplm",) + path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        out.append((module, ast.parse(path.read_text())))
    return out


def _reads(trees: list[tuple[str, ast.Module]]) -> set[str]:
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef) and node.name == "__post_init__":
            return
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            names.add(node.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            names.add(node.args[1].value)
        # for key in ("a", "b"): ... getattr(obj, key) ...
        if (isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List))
                and any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "getattr" and len(n.args) >= 2
                        and isinstance(n.args[1], ast.Name) and n.args[1].id == node.target.id
                        for stmt in node.body for n in ast.walk(stmt))):
            names.update(e.value for e in node.iter.elts if isinstance(e, ast.Constant))
        for child in ast.iter_child_nodes(node):
            visit(child)

    for _, tree in trees:
        visit(tree)
    return names


def _schemas(trees: list[tuple[str, ast.Module]]) -> set[type]:
    roots: set[type] = {PretrainConfig}
    roots.update(_import(t) for section in SECTION_SCHEMAS.values() for t in section.values())
    for module, tree in trees:
        # where each name comes from, lazy imports inside functions included
        origin = {a.asname or a.name: n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                  for a in n.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "load_config":
                for kw in node.keywords:
                    if kw.arg == "schema" and isinstance(kw.value, ast.Name):
                        roots.add(getattr(importlib.import_module(origin.get(kw.value.id, module)), kw.value.id))
    found: set[type] = set()
    todo = list(roots)
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for t in [hints[f.name], *typing.get_args(hints[f.name])]:
                if dataclasses.is_dataclass(t) and isinstance(t, type):
                    todo.append(t)
    return found


def test_schemas_are_found():
    names = {cls.__name__ for cls in _schemas(_package_modules())}
    assert {"PretrainConfig", "TrainerConfig", "OptimConfig", "RunConfig", "TaskConfig", "BiMambaConfig",
            "SparseTransformerConfig", "DownstreamConfig", "SweepConfig", "SlurmConfig"} <= names, names


def test_every_config_key_is_read_by_some_code():
    trees = _package_modules()
    reads = _reads(trees)
    unread = sorted(f"{cls.__name__}.{f.name}" for cls in _schemas(trees) for f in dataclasses.fields(cls)
                    if f.name not in reads)
    assert not unread, f"config keys no code reads: {unread}"


def test_the_check_tells_reads_from_validation():
    source = """
class Probe:
    def __post_init__(self):
        assert self.validated_only >= 0
        assert getattr(self, "also_validated_only") >= 0

def use(cfg):
    for key in ("looped_a", "looped_b"):
        print(getattr(cfg, key))
    return cfg.plain + getattr(cfg, "named")
"""
    reads = _reads([("probe", ast.parse(source))])
    assert {"looped_a", "looped_b", "plain", "named"} <= reads
    assert not {"validated_only", "also_validated_only"} & reads
