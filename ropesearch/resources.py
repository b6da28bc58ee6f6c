"""Where shipped resources are: search spaces, plans and lm-eval task files.

The source tree keeps one copy of each at its top level (search_spaces/, eval/tasks/);
pyproject's package-dir maps them into the package at build time (ropesearch.search_spaces,
ropesearch.lm_eval_tasks), so an installed wheel reads them with importlib.resources.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from ropesearch.errors import RopesearchError
from ropesearch.validate import read_text

# the folder holding the ropesearch package: a checkout's root, or site-packages once installed
_CODE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Kind:
    what: str  # "search space": how errors name one
    package: str  # where the wheel puts them
    subfolder: str  # below the package, "" for its top
    checkout: str  # the same folder in the source tree, from its root
    suffix: str  # file names end with it; names are the stems


SPACES = Kind("search space", "ropesearch.search_spaces", "", "search_spaces", ".yaml")
PLANS = Kind("plan", "ropesearch.search_spaces", "plans", "search_spaces/plans", ".yaml")
LM_EVAL_TASKS = Kind("lm-eval task file", "ropesearch.lm_eval_tasks", "", "eval/tasks", "")


def folder(kind: Kind) -> Traversable:
    """The folder of shipped files of this kind.

    A checkout's own folder wins where the code runs from a checkout (PYTHONPATH or an editable
    install): another install's mapping of the package must not serve a different copy, and
    setuptools' editable finder does not import these folders (they have no __init__.py).
    """
    checkout = _CODE_ROOT / kind.checkout
    if (_CODE_ROOT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    try:
        found = importlib.resources.files(kind.package)
    except ModuleNotFoundError:
        raise _broken(kind, f"no package {kind.package}") from None
    return found.joinpath(kind.subfolder) if kind.subfolder else found


def names(kind: Kind) -> list[str]:
    """The shipped names of this kind, sorted; never empty (an empty list is a broken install)."""
    base = folder(kind)
    found = sorted(entry.name.removesuffix(kind.suffix) for entry in (base.iterdir() if base.is_dir() else [])
                   if entry.is_file() and entry.name.endswith(kind.suffix))
    if not found:
        raise _broken(kind, f"no {kind.what}s in {base}")
    return found


def file(kind: Kind, name: str) -> Traversable:
    """One shipped file by name (without its suffix); an error lists the shipped names."""
    entry = folder(kind).joinpath(name + kind.suffix)
    if not entry.is_file():
        raise RopesearchError(f"{kind.what} {name} is not shipped (shipped: {', '.join(names(kind))})")
    return entry


def load_yaml(spec: str | Path, kind: Kind) -> tuple[Any, str]:
    """A YAML document from a file path or a shipped name, with the place it came from (for errors).

    A spec that is no file is a shipped name: bare (`fast`), with the suffix, or in its
    source-tree form (`search_spaces/plans/pocket-quickstart.yaml`, as the README writes it).
    """
    path = Path(spec)
    if path.is_file():
        return read_yaml(path, kind.what), str(path)
    entry = folder(kind).joinpath(path.name.removesuffix(kind.suffix) + kind.suffix)
    if path.parent not in (Path("."), Path(kind.checkout)) or not entry.is_file():
        if path.exists():  # a folder, a FIFO, a device: said so (read_text refuses each)
            return read_yaml(path, kind.what), str(path)
        raise RopesearchError(f"{kind.what} {spec} is neither a file nor shipped "
                              f"(shipped {kind.what}s, usable by name: {', '.join(names(kind))})")
    return read_yaml(entry, kind.what), str(entry)


MAX_YAML_BYTES = 1 << 20  # spaces and plans are a few KiB
MAX_YAML_DEPTH = 64


class _PlainLoader(yaml.SafeLoader):
    """safe_load without aliases (`*name`: each may repeat a whole subtree, so a few lines expand to
    billions of nodes, the 'billion laughs') and without deep nesting (the composer recurses)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed: write the value out",
                                              self.peek_event().start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_yaml(path: Path | Traversable, what: str) -> Any:
    """Parsed YAML (plain data: no tags beyond safe_load's, no aliases); a syntax error names the file,
    line and column."""
    try:
        loader = _PlainLoader(read_text(path, what, f"give a {what} file", limit=MAX_YAML_BYTES))
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RopesearchError(f"{what} {where}: not valid YAML ({problem})") from None


def _broken(kind: Kind, why: str) -> RopesearchError:
    return RopesearchError(f"this ropesearch installation is broken: {why}; reinstall it "
                           f"(pip install --force-reinstall ropesearch) or run from a checkout")
