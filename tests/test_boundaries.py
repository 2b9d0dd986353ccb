"""The design's boundaries, enforced: who may import whom, what stays torch-free, and no import cycles.

Why: the bot process must start fast and stay small (torch is only for the worker and the intake sandbox), the
engine must be usable without Discord (CLI, benchmarks, standalone workers), only the composition root knows the
cogs, and a cycle between modules is a design knot even when a lazy import hides it at run time.  Imports are read
from the source (``ast``), lazy and ``TYPE_CHECKING`` ones included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "cogs", "engine")
#: Engine parts that run inside the worker or the intake sandbox (or are the render CLI): they may import torch.
TORCH_ALLOWED = ("engine.worker", "engine.hypernet", "engine.conditioning", "engine.lora", "engine.sampling",
                 "engine.intake.sandbox", "engine.__main__")
#: ...except these worker-side modules, which take torch-backed parts as parameters.
TORCH_FREE_INSIDE = ("engine.worker.hypernet_cache",)
HEAVY = ("torch", "diffusers", "transformers", "safetensors.torch", "numpy")


def module_names(package: str) -> list[str]:
    """Every module of ``package`` and of its subpackages (``bot.store.jobs``), a package by its own name."""
    names = []
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def _path(module: str) -> Path:
    base = ROOT / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _import_nodes(module: str) -> Iterator[tuple[str, list[str]]]:
    """``(source, names)`` for every import statement of ``module``: ``import a.b`` is ``("a.b", [])``, relative
    imports are made absolute."""
    is_package = _path(module).name == "__init__.py"
    for node in ast.walk(ast.parse(_path(module).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                parts = module.split(".")
                base = ".".join(parts[: len(parts) - node.level + (1 if is_package else 0)])
                source = f"{base}.{node.module}" if node.module else base
            yield source, [alias.name for alias in node.names]


def imports_of(module: str) -> Iterator[str]:
    """Every absolute name ``module`` imports (``from a.b import c`` yields ``a.b`` and ``a.b.c``)."""
    for source, names in _import_nodes(module):
        yield source
        yield from (f"{source}.{name}" for name in names)


def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it depends on.  ``from pkg import sub`` depends on ``pkg.sub`` when ``sub`` is a
    module, else on ``pkg`` (its ``__init__`` provides the name)."""
    modules = {m for p in PACKAGES for m in module_names(p)}
    graph: dict[str, set[str]] = {}
    for module in modules:
        deps: set[str] = set()
        for source, names in _import_nodes(module):
            subs = {f"{source}.{n}" for n in names} & modules
            deps |= subs
            if source in modules and (not names or len(subs) < len(names)):
                deps.add(source)
        graph[module] = deps - {module}
    return graph


def torch_free_modules() -> list[str]:
    return [m for p in PACKAGES for m in module_names(p)
            if not _within(m, TORCH_ALLOWED) or _within(m, TORCH_FREE_INSIDE)]


def test_engine_never_imports_discord_bot_or_cogs() -> None:
    offenders = {m: sorted(bad) for m in module_names("engine")
                 if (bad := {i.split(".")[0] for i in imports_of(m)} & {"discord", "bot", "cogs"})}
    assert offenders == {}


def test_only_the_runner_names_the_cogs() -> None:
    offenders = {m: sorted(i for i in imports_of(m) if i.split(".")[0] == "cogs")
                 for m in module_names("bot") if m != "bot.runner"}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_bot_side_of_the_engine_never_imports_the_worker_side() -> None:
    bot_side = ("engine.client", "engine.intake")
    offenders = {m: sorted(i for i in imports_of(m) if _within(i, ("engine.worker", "engine.hypernet")))
                 for p in ("bot", "cogs") for m in module_names(p)}
    offenders |= {m: sorted(i for i in imports_of(m) if _within(i, ("engine.worker",)))
                  for m in module_names("engine") if _within(m, bot_side)}
    assert {m: i for m, i in offenders.items() if i} == {}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by a depth-first walk, as the path that closes it (``[a, b, a]``)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles() -> None:
    assert find_cycles(project_graph()) == []


def test_cycle_detection_sees_lazy_and_type_checking_imports() -> None:
    """The graph includes imports inside functions and under TYPE_CHECKING (they hid cycles before)."""
    graph = project_graph()
    assert "bot.app" in graph["cogs.buttons"]  # only imported under TYPE_CHECKING there
    assert "engine.worker.tiny" in graph["engine.worker.checkpoints"]  # only imported inside a function
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_bot_cogs_and_light_engine_import_without_torch() -> None:
    modules = torch_free_modules()
    assert {"bot.config", "bot.store", "bot.jobs.service", "bot.migrations.migrate", "engine.protocol",
            "engine.client.client", "engine.intake.ingest", "engine.worker.hypernet_cache", "cogs.imagine"} <= set(modules)
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
