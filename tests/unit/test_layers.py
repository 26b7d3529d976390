"""The structure of analysis/: the import-linter contract, the size of its top level, no Streamlit inside."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contract_is_kept():
    """Layers in order, no upward import (imports inside functions count), no circle in any package."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_at_most_ten_modules_at_the_top_of_analysis():
    top = sorted(p.name for p in (ROOT / "analysis").glob("*.py"))
    assert len(top) <= 10, top


def test_every_package_says_what_it_holds_and_may_import():
    for init in (ROOT / "analysis").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if init.parent.name in ("cli",):
            continue
        assert "May import" in doc, f"{init} has no 'May import' line"


def test_analysis_never_imports_streamlit():
    for path in (ROOT / "analysis").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "streamlit" for n in names), path


def test_change_kinds_do_not_import_their_table():
    """peft's rule: the table (changes.variant) imports the kinds; a kind never imports the table."""
    from analysis.changes import variant

    for kind in variant.KINDS:
        tree = ast.parse(Path(kind.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert "analysis.changes.variant" not in imported, kind.__name__
        assert kind.ACTIONS, kind.__name__
    assert sorted(variant.actions()) == sorted(a.key for k in variant.KINDS for a in k.ACTIONS)
