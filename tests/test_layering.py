"""The import rules of docs/architecture.md, checked on every module's source (``ast``).

protocol → nothing of ours (and msgspec as its only third-party package); formats and recipe →
protocol; clients → protocol, formats, recipe; daemon → protocol, formats, recipe.  The daemon
never imports a client (it starts the recorder as a process, by module name), and no client
imports the daemon.  Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "formats", "recipe", "daemon", "clients")  # folder = tritter.<name>
ALLOWED: dict[str, set[str]] = {
    "protocol": {"protocol"},
    "formats": {"formats", "protocol"},
    "recipe": {"recipe", "protocol"},
    "clients": {"clients", "protocol", "formats", "recipe"},
    "daemon": {"daemon", "protocol", "formats", "recipe"},
}
# Third-party packages a layer may use; None = any.  protocol is the wire format every client
# needs (msgspec only); recipe is pure Python so clients can plan runs without torch.
THIRD_PARTY: dict[str, set[str] | None] = {
    "protocol": {"msgspec"},
    "recipe": {"msgspec"},
    "formats": None,
    "clients": None,
    "daemon": None,
}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` for every import in ``source`` (the module ``module``).

    Relative imports are resolved against ``module`` (e.g. ``tritter.daemon.engine.trainer``).
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name in ("tritter",):  # ``from tritter import daemon``
                found += [(node.lineno, f"tritter.{alias.name}") for alias in node.names]
    return sorted(found)


def violations(layer: str, module: str, source: str) -> list[str]:
    """Every import in ``source`` that ``layer``'s rules forbid, one line each (empty = clean)."""
    bad = []
    allowed = ALLOWED[layer]
    third_party = THIRD_PARTY[layer]
    for line, name in imported_modules(source, module):
        top = name.split(".")[0]
        if top == "tritter":
            parts = name.split(".")
            if len(parts) > 1 and parts[1] not in allowed:
                bad.append(f"{module}:{line} imports {name} ({layer} may import {', '.join(sorted(allowed))})")
        elif third_party is not None and top not in sys.stdlib_module_names and top not in third_party and top != "__future__":
            bad.append(f"{module}:{line} imports {name} ({layer} may use only {', '.join(sorted(third_party))} outside the standard library)")
    return bad


def modules() -> list[tuple[str, str, Path]]:
    """``(layer, dotted module name, path)`` for every .py file of the five packages."""
    out = []
    for layer in PACKAGES:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT / layer).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((layer, ".".join(["tritter", layer, *parts]), path))
    return out


def test_every_package_is_checked() -> None:
    found = {layer for layer, _, _ in modules()}
    assert found == set(PACKAGES)
    assert len(modules()) > 40  # the walk really finds the modules


@pytest.mark.parametrize("layer", PACKAGES)
def test_imports_follow_the_layers(layer: str) -> None:
    bad = []
    for owner, module, path in modules():
        if owner == layer:
            bad += violations(layer, module, path.read_text())
    assert not bad, "import rules broken (docs/architecture.md):\n" + "\n".join(bad)


def test_the_checker_catches_each_kind_of_violation() -> None:
    # A daemon module importing a client, directly, lazily and relatively:
    source = (
        "from tritter.clients.record import Recorder\n"
        "def f():\n    import tritter.clients.upload\n"
        "from ...clients import ctl\n"
        "from tritter.formats import codec\n"
    )
    bad = violations("daemon", "tritter.daemon.engine.trainer", source)
    assert [b.split(" ", 1)[0] for b in bad] == [
        "tritter.daemon.engine.trainer:1", "tritter.daemon.engine.trainer:3", "tritter.daemon.engine.trainer:4",
    ]
    assert violations("protocol", "tritter.protocol.x", "import torch\nimport msgspec\nimport json\n") == [
        "tritter.protocol.x:1 imports torch (protocol may use only msgspec outside the standard library)"
    ]
    assert violations("formats", "tritter.formats.x", "from tritter import daemon\n")  # the package itself
    assert violations("clients", "tritter.clients.x", "from tritter.daemon.engine.model import LlamaForCausalLM\n")
    assert not violations("clients", "tritter.clients.x", "from tritter.recipe.presets import get_preset\n")
