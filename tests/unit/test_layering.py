"""One-way layering: no module of DAEBench imports one of a layer above it (lazy imports
inside functions count too), and no code imports the repository folders by their own
names (`benchmark`, `attacks`, `defenses`) instead of the installed `daebench`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"benchmark": "daebench", "attacks": "daebench.attacks", "defenses": "daebench.defenses"}

# core <- plugins <- plan / stages <- run <- results <- report <- CLI / API
LAYERS = [
    ("core", ["daebench.errors", "daebench.registry", "daebench.compat", "daebench.runtime", "daebench.paths",
              "daebench.store", "daebench.data", "daebench.plugins", "daebench.training", "daebench.heads",
              "daebench.metrics", "daebench.provenance", "daebench.encoders", "daebench.imagefolder",
              "daebench.timing"]),
    ("plugins", ["daebench.attacks", "daebench.defenses"]),
    ("plan and stages", ["daebench.config", "daebench.specs", "daebench.plan", "daebench.stages", "daebench.executors"]),
    ("run", ["daebench.runner", "daebench.estimator"]),
    ("results", ["daebench.results", "daebench.reuse"]),
    ("report", ["daebench.report", "daebench.paper"]),
    ("CLI and API", ["daebench.cli", "daebench.api", "daebench.probe", "daebench"]),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, module
    return rank


def _sources():
    for folder in FOLDERS:
        yield from sorted((REPO / folder).rglob("*.py"))


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_layer_above_its_own(path):
    module = _module_name(path)
    own = _layer(module)
    upward = [f"line {line}: {name} ({LAYERS[_layer(name)][0]})" for line, name in _imports(path)
              if name.startswith("daebench") and _layer(name) > own and name != "daebench"]
    assert not upward, f"{module} ({LAYERS[own][0]}) imports upward: {'; '.join(upward)}"


def test_no_code_imports_the_folders_by_their_repository_names():
    offenders = [f"{path.relative_to(REPO)}:{line} {name}"
                 for folder in [*FOLDERS, "tests", "scripts"] for path in (REPO / folder).rglob("*.py")
                 for line, name in _imports(path) if name.split(".")[0] in FOLDERS]
    assert not offenders, offenders


def test_the_installed_package_is_daebench_and_nothing_generic(tmp_path):
    """From outside the repository: `import daebench` (and its plugins) works; the folder
    names `benchmark`, `attacks`, `defenses` are not importable top-level packages."""
    import subprocess
    import sys

    code = ("import importlib.util, daebench, daebench.attacks, daebench.defenses; "
            "print([importlib.util.find_spec(n) is None for n in ('benchmark', 'attacks', 'defenses')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[True, True, True]"
