"""The package's layers hold: each part imports only the parts below it, no `_private` name crosses
from one part into another, and no modules import each other in a cycle (not even through an import
inside a function, which only hides a cycle).

Bottom to top: schemas < datakit < collectors < omgmg's algorithms, trainer and experiments < cli.
Read from the source with `ast`, so an import inside a function or behind a condition counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import PACKAGE_FOLDERS

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = PACKAGE_FOLDERS
LAYERS = ["schemas", "datakit", "collectors", "core", "cli"]  # "core": omgmg's own modules (algos, trainer, ...)


def module_files() -> dict[str, Path]:
    """Installed module name -> source file, for every module of the package."""
    out = {}
    for folder, prefix in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((prefix, *parts))] = path
    return out


MODULES = module_files()


def part(module: str) -> str:
    """Which layer a module belongs to."""
    for name in ("schemas", "datakit", "collectors", "cli"):
        if module == f"omgmg.{name}" or module.startswith(f"omgmg.{name}."):
            return name
    return "core"


def project_imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import of a project module."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "omgmg"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "omgmg":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return out


def resolve(target: str) -> str:
    """The project module an import loads (the longest known prefix: ``omgmg.datakit.spec.EnvSpec``
    names the module ``omgmg.datakit.spec``)."""
    while target not in MODULES:
        target = target.rpartition(".")[0]
    return target


def test_every_module_is_found_and_parts_are_known():
    assert "omgmg.datakit.writer" in MODULES and "omgmg.collectors.envs" in MODULES and "omgmg.cli.data" in MODULES
    assert {part(m) for m in MODULES} == set(LAYERS)


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    for module in MODULES:
        mine = LAYERS.index(part(module))
        for target, _, line in project_imports(module):
            target = resolve(target)
            if target == "omgmg":  # the top-level package: its version and the checkout's path only
                continue
            if LAYERS.index(part(target)) > mine:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} ({part(module)}) imports {target}")
    assert not wrong, "imports of a higher layer:\n" + "\n".join(wrong)


def test_no_private_name_is_imported_from_another_part():
    wrong = []
    for module in MODULES:
        for target, name, line in project_imports(module):
            private = [
                p
                for p in (resolve(target).split(".") + ([name] if name else []))
                if p.startswith("_") and not p.startswith("__")
            ]
            if private and part(resolve(target)) != part(module):
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}.{name or ''}")
    assert not wrong, "private names used across parts:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: sorted({resolve(t) for t, _, _ in project_imports(m)} - {m, "omgmg"}) for m in MODULES}

    # a package's __init__ importing its own submodules is how packages work, not a cycle
    def edges(m):
        return [t for t in graph[m] if not (t.startswith(m + ".") and MODULES[m].name == "__init__.py")]

    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in edges(m):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
