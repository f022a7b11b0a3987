"""The house rules, checked on every import of the package (module level and inside functions):
R1 layers core <- flare <- tools <- cli (a layer imports only its own and the ones before it);
R2 no import cycle; and the FLARE server's components load neither torch nor open_clip."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import fedrsclip
from helpers import ENV

PACKAGE = Path(fedrsclip.__file__).parent
LAYERS = ["core", "flare", "tools", "cli"]
SERVER_COMPONENTS = [
    "fedrsclip.flare.aggregator",
    "fedrsclip.flare.he.aggregator",
    "fedrsclip.flare.persistor",
    "fedrsclip.flare.locator",
    "fedrsclip.flare.results",
    "fedrsclip.flare.model_file",
    "fedrsclip.flare.constants",
    "fedrsclip.flare.he_aggregator",
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["fedrsclip", *path.relative_to(PACKAGE).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> str:
    if module == "fedrsclip.cli":
        return "cli"
    for name in ("flare", "tools"):
        if module == f"fedrsclip.{name}" or module.startswith(f"fedrsclip.{name}."):
            return name
    return "core"


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported fedrsclip module, line) of every import statement anywhere in the file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "fedrsclip"]
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                if node.level
                else (node.module or "")
            )
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                if target.split(".")[0] == "fedrsclip":
                    out.append((target, node.lineno))
    return [(t, line) for t, line in out if t in known]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _ in imports(m, p, known) if t != m and not t.startswith(m + ".")} for m, p in known.items()}


def test_no_layer_imports_a_later_one():
    known = modules()
    upward = [
        f"{m} ({p.relative_to(PACKAGE.parent)}:{line}) imports {t}"
        for m, p in known.items()
        for t, line in imports(m, p, known)
        if LAYERS.index(layer(t)) > LAYERS.index(layer(m))
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_shared_tool_agrees():
    """The project's own cycle finder (../shared/tools/import_cycles.py), where the checkout has it."""
    tool = PACKAGE.parents[2] / "shared" / "tools" / "import_cycles.py"
    if not tool.is_file():
        import pytest

        pytest.skip(f"{tool} is absent")
    proc = subprocess.run(
        [sys.executable, str(tool), str(PACKAGE.parent), "fedrsclip"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_the_server_loads_neither_torch_nor_open_clip():
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in SERVER_COMPONENTS)
        + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'timm'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_package_data_names_only_files_that_exist():
    """pyproject.toml's package data: every pattern matches a file (the job builder's files among them)."""
    import tomllib

    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["fedrsclip"]
    assert all(list(PACKAGE.glob(pattern)) for pattern in patterns), patterns
    assert (PACKAGE / "flare" / "job_files" / "fedrsclip.yaml") in PACKAGE.glob("flare/job_files/*.yaml")
    assert {d.split(">")[0].split("<")[0].split("=")[0] for d in project["project"]["dependencies"]} >= {
        "torch",
        "nvflare",
        "open_clip_torch",
        "numpy",
    }
