"""The shape of the package (issue 13): small files, and no private name used across packages.

A private name is a module ``_x`` or a name ``_x``. It may be imported only from inside the package
(directory) that holds it; other packages use the public names that package exports.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixsim"
MAX_LINES = 450  # "no file in mixsim/ over about 450 lines"


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_of(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _package_of(path: Path) -> tuple[str, ...]:
    """The package a file belongs to: its directory, as module components."""
    return path.parent.relative_to(PACKAGE.parent).parts


def _is_package(module: tuple[str, ...]) -> bool:
    return (PACKAGE.parent.joinpath(*module) / "__init__.py").exists()


def _resolve(path: Path, node: ast.ImportFrom) -> tuple[str, ...]:
    if node.level == 0:
        return tuple((node.module or "").split("."))
    base = _package_of(path)[: len(_package_of(path)) - (node.level - 1)]
    return base + (tuple(node.module.split(".")) if node.module else ())


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _violations(path: Path) -> list[str]:
    """Imports in ``path`` that reach a private module or name of another package."""
    here = _package_of(path)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[tuple[tuple[str, ...], str | None]] = []
        if isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            for alias in node.names:
                sub = module + (alias.name,)
                if _is_package(sub) or PACKAGE.parent.joinpath(*sub).with_suffix(".py").exists():
                    targets.append((sub, None))  # "from package import module"
                else:
                    targets.append((module, alias.name))
        elif isinstance(node, ast.Import):
            targets = [(tuple(alias.name.split(".")), None) for alias in node.names]
        for module, name in targets:
            if not module or module[0] != "mixsim":
                continue
            owner = module if _is_package(module) else module[:-1]  # the package holding the target
            private = any(_private(p) for p in module) or (name is not None and _private(name))
            if private and owner != here:
                what = ".".join(module) + (f".{name}" if name else "")
                out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {what}")
    return out


def test_no_private_name_is_imported_across_packages():
    found = [v for path in _sources() for v in _violations(path)]
    assert not found, "private names imported from another package:\n" + "\n".join(found)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The rule itself: a file of mixsim.study importing mixsim._x (or mixsim.model._y) breaks it."""
    pkg = tmp_path / "mixsim"
    (pkg / "study").mkdir(parents=True)
    for f in ("__init__.py", "_x.py", "model.py", "study/__init__.py"):
        (pkg / f).write_text("")
    bad = pkg / "study" / "runner.py"
    bad.write_text("from .._x import a\nfrom ..model import _y\nfrom ..model import z\nfrom . import spec\n")
    ok = pkg / "_z.py"
    ok.write_text("from ._x import a\nfrom .model import _y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert [v.split(" imports ")[1] for v in _violations(bad)] == ["mixsim._x.a", "mixsim.model._y"]
    assert _violations(ok) == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_are_small_enough_to_read_whole(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {n} lines (at most {MAX_LINES})"


def _mixsim_imports(path: Path) -> set[tuple[str, ...]]:
    """Every mixsim module ``path`` imports, at any depth (inside functions and under TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            found |= {module + (alias.name,) for alias in node.names} | {module}
        elif isinstance(node, ast.Import):
            found |= {tuple(alias.name.split(".")) for alias in node.names}
    return {m for m in found if m and m[0] == "mixsim"}


def test_the_layer_library_imports_neither_the_study_nor_the_plots():
    """mixsim.nn is a layer library (issue 20): no import of mixsim.study or mixsim.plots, anywhere in it."""
    found = [f"{path.relative_to(PACKAGE.parent)} imports {'.'.join(m)}"
             for path in sorted((PACKAGE / "nn").rglob("*.py")) for m in _mixsim_imports(path)
             if m[:2] in (("mixsim", "study"), ("mixsim", "plots"))]
    assert not found, "\n".join(found)


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    pkg = tmp_path / "mixsim"
    (pkg / "nn").mkdir(parents=True)
    bad = pkg / "nn" / "_x.py"
    bad.write_text("def f():\n    from ..study import run_study\n    from .. import plots\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert {m[:2] for m in _mixsim_imports(bad)} >= {("mixsim", "study"), ("mixsim", "plots")}
