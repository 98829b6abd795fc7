"""The layers of ARCHITECTURE.md hold: no upward import, no import circle — and the check fails when one is added."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.import_graph import ROOT, contracts, cycles, import_graph, layer_violations

PACKAGES = ["service", "pipeline", "pruning", "exporters"]


def test_no_layer_imports_upward():
    graph = import_graph(ROOT, PACKAGES)
    for contract in contracts():
        assert layer_violations(graph, contract) == [], contract["name"]


def test_no_import_circle():
    assert cycles(import_graph(ROOT, PACKAGES)) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph(ROOT, PACKAGES)
    # service.cli.local imports the pipeline runner inside cmd functions only (torch stays unloaded for --help)
    assert "pipeline.run" in graph["service.cli.local"]


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def _add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n\ndef _injected():\n    {line}\n")


def test_an_upward_import_fails_the_check(tmp_path):
    root = _copy_tree(tmp_path)
    _add_line(root / "service" / "core" / "errors.py", "from service.cli.main import main  # upward: core -> cli")
    _add_line(root / "pruning" / "plan.py", "import pipeline.run  # upward: engine -> pipeline")
    graph = import_graph(root, PACKAGES)
    found = [v for contract in contracts(root) for v in layer_violations(graph, contract)]
    assert "service.core.errors -> service.cli.main" in found
    assert "pruning.plan -> pipeline.run" in found
    assert any("service.core.errors" in c and "service.cli.main" in c for c in cycles(graph))


def test_a_circle_inside_one_layer_fails_the_check(tmp_path):
    root = _copy_tree(tmp_path)
    _add_line(root / "pipeline" / "spec.py", "import pipeline.run  # run -> spec -> run")
    assert any({"pipeline.run", "pipeline.spec"} <= set(c) for c in cycles(import_graph(root, PACKAGES)))


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(linter)], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(not Path(sys.executable).with_name("lint-imports").exists(),
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_linter_keeps_the_contracts_and_breaks_on_an_upward_import(tmp_path):
    root = _copy_tree(tmp_path)
    kept = _lint_imports(root)
    assert kept.returncode == 0, kept.stdout[-2000:]
    _add_line(root / "service" / "jobs" / "store.py", "import service.api.server  # upward: jobs -> api")
    broken = _lint_imports(root)
    assert broken.returncode != 0
    assert "service.jobs is not allowed to import service.api" in broken.stdout
