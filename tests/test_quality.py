"""The repository's own lint and format rules (ruff, configured in pyproject.toml) are part of the test suite."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    result = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_commands_the_readme_gives():
    """.ci/run installs the CPU torch the README names and runs the README's test command, character for character."""
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    marker = "# --- README test command (keep identical to README.md) ---\n"
    assert marker in ci
    test_command = ci.split(marker)[1].strip().splitlines()[0]
    assert test_command in readme, f"README.md lacks .ci/run's test command {test_command!r}"
    assert "python -m pip install -q torch==2.13.0" in ci
    assert any(line.startswith("pip install torch==2.13.0") for line in readme)
    first_install = next(i for i, line in enumerate(readme) if line.startswith("pip install -e"))
    assert next(i for i, line in enumerate(readme) if "torch==2.13.0" in line) < first_install, "CPU torch note first"
