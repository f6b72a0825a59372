"""Where study specs are found by name: the studies shipped inside the package, and a local
``./studies`` folder, whose ``NAME.toml`` wins over a shipped study of the same name.

The shipped studies are the repository's top-level ``studies/*.toml``, installed as the package
data ``mixsim.studies`` (the wheel and the sdist carry them; an editable install maps the folder).
They are read through :mod:`importlib.resources`, so they are found from any working folder after
any kind of install.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["SHIPPED_PACKAGE", "LOCAL_FOLDER", "StudyFile", "shipped_studies", "local_studies", "list_studies", "find_study"]

#: The package that holds the shipped ``*.toml`` specs.
SHIPPED_PACKAGE = "mixsim.studies"
#: The local folder searched first, relative to the working folder.
LOCAL_FOLDER = "studies"


@dataclass(frozen=True)
class StudyFile:
    """A study spec found by name.

    Attributes
    ----------
    name : str
        The file's stem (``smoke`` for ``smoke.toml``).
    origin : {"local", "shipped"}
        From the local ``./studies`` folder, or shipped inside the package.
    path : Path or Traversable
        Where to read it (``path.read_text()``).
    overrides_shipped : bool
        A local file that hides a shipped study of the same name.
    """

    name: str
    origin: str
    path: Path | Traversable
    overrides_shipped: bool = False


def shipped_studies() -> dict[str, Traversable]:
    """The specs shipped inside the package, by name (empty if the package data is missing)."""
    try:
        folder = resources.files(SHIPPED_PACKAGE)
    except ModuleNotFoundError:
        return {}
    found = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(".toml")]
    return {p.name[: -len(".toml")]: p for p in sorted(found, key=lambda p: p.name)}


def local_studies(folder: str | Path | None = None) -> dict[str, Path]:
    """The specs in ``folder`` (default ``./studies`` of the working folder), by name."""
    root = Path(folder) if folder is not None else Path.cwd() / LOCAL_FOLDER
    return {p.stem: p for p in sorted(root.glob("*.toml"))} if root.is_dir() else {}


def list_studies(folder: str | Path | None = None) -> list[StudyFile]:
    """Every study a name can reach, sorted by name: a local one where both exist (it wins)."""
    shipped, local = shipped_studies(), local_studies(folder)
    out = [StudyFile(name, "local", path, name in shipped) for name, path in local.items()]
    out += [StudyFile(name, "shipped", path) for name, path in shipped.items() if name not in local]
    return sorted(out, key=lambda s: s.name)


def find_study(name: str | Path, folder: str | Path | None = None) -> StudyFile:
    """A spec from a file path, or a study name (``smoke``, or ``smoke.toml``): local first, then shipped.

    Raises
    ------
    FileNotFoundError
        Naming the studies that are known.
    """
    path = Path(name)
    if path.is_file():
        return StudyFile(path.stem, "local", path)
    stem = path.name[: -len(".toml")] if path.name.endswith(".toml") else path.name
    if path.parent == Path("."):
        for study in list_studies(folder):
            if study.name == stem:
                return study
    known = [s.name for s in list_studies(folder)]
    hint = "" if shipped_studies() else f"; no shipped study was found: reinstall mixsim (package data {SHIPPED_PACKAGE})"
    raise FileNotFoundError(f"no study file {str(name)!r} (and no such name in ./{LOCAL_FOLDER} or among the shipped "
                            f"studies; known: {known}{hint})")
