"""The design's boundaries, enforced: the Discord side stays torch-free and engine/ never imports Discord.

Why: the bot process must start fast and stay small (torch is only for the worker process), and the
engine must be usable without Discord (CLI, benchmarks, a future multi-GPU worker).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Engine modules that run inside the worker or the intake sandbox (or are the render CLI) and may import torch.
TORCH_ALLOWED = {"worker", "pipeline", "tiny", "samplers", "checkpoints", "intake_sandbox", "__main__"}
TORCH_ALLOWED_PREFIXES = ("hypernet", "sampling")
HEAVY = ("torch", "diffusers", "transformers", "safetensors.torch", "numpy")


def module_names(package: str) -> list[str]:
    """Every module of ``package`` and of its subpackages (``bot.store.jobs``), a package by its own name."""
    names = []
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def torch_free_engine_modules() -> list[str]:
    names = []
    for name in module_names("engine"):
        stem = name.rsplit(".", 1)[-1]
        if stem in TORCH_ALLOWED or any(part.startswith(TORCH_ALLOWED_PREFIXES) for part in name.split(".")[1:]):
            continue
        names.append(name)
    return names


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_engine_never_imports_discord_bot_or_cogs() -> None:
    offenders = {}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        bad = imported_roots(path) & {"discord", "bot", "cogs"}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_bot_cogs_and_light_engine_import_without_torch() -> None:
    modules = module_names("bot") + module_names("cogs") + torch_free_engine_modules()
    assert {"bot.config", "bot.store", "bot.store.jobs", "bot.migrations.migrate", "engine.protocol"} <= set(modules)
    script = (
        "import sys\n"
        f"for heavy in {HEAVY!r}:\n"
        "    sys.modules[heavy] = None  # makes `import torch` raise ImportError\n"
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    if name == 'bot.__main__':\n"
        "        continue\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')\n"
        "                and sys.modules[m] is not None)\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout
