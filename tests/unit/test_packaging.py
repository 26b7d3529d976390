"""Packaging as users expect: pinned dependencies that agree, a console script, a short README, current docs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_pyproject_dependencies_match_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    assert declared, "no dependencies in pyproject.toml"
    for name, version in declared.items():
        assert requirements.get(name) == version, f"{name}: pyproject {version}, requirements {requirements.get(name)}"
    assert project["scripts"]["layerscope"] == "analysis.cli.main:main"


def test_console_script_and_module_are_the_same_command():
    script = Path(sys.executable).with_name("layerscope")
    if not script.exists():  # installed by `make setup` (pip install -e .)
        import pytest

        pytest.skip("layerscope console script not installed in this environment (make setup installs it)")
    a = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "analysis", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert a.returncode == 0 and b.returncode == 0
    assert " ".join(a.stdout.replace("layerscope", "python -m analysis").split()) == " ".join(b.stdout.split())
    assert "ui" in a.stdout


def test_readme_is_short_and_has_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 200
    text = "\n".join(readme)
    assert "make run" in text and "make test" in text


def test_cli_reference_is_current():
    from analysis.cli.reference import reference

    assert (ROOT / "docs" / "cli.md").read_text() == reference(), (
        "docs/cli.md is stale: python -m analysis.cli.reference > docs/cli.md"
    )


def test_docs_links_resolve():
    for md in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", md.read_text()):
            assert (md.parent / target).exists(), f"{md.name} links to missing {target}"
