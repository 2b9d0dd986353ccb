"""The grammar side of engine.conditioning imports without torch (the boundary test skips this package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PURE = ["engine.conditioning", "engine.conditioning.and_split", "engine.conditioning.schedules",
        "engine.conditioning.emphasis", "engine.conditioning.chunks", "engine.conditioning.plan",
        "engine.conditioning.errors"]


def test_grammar_modules_import_without_torch() -> None:
    script = (
        "import sys\n"
        "for heavy in ('torch', 'transformers', 'safetensors', 'numpy'):\n"
        "    sys.modules[heavy] = None\n"
        "import importlib\n"
        f"for name in {PURE!r}:\n"
        "    importlib.import_module(name)\n"
        "import engine.conditioning as c\n"
        "print(c.prompt_schedule('a [b:c:0.5]', 4))\n"
        "try:\n"
        "    c.PromptEncoder\n"
        "except ImportError:\n"
        "    print('LAZY')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ScheduleEntry(end_at_step=2, text='a b')" in result.stdout
    assert "LAZY" in result.stdout
