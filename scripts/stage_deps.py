"""The code each DVC stage runs, derived from the source with ``ast``: the import graph of ``medrov/`` (imports
inside functions count, a lazy import is still an arrow) walked from the ``medrov`` CLI command a stage calls.

``python scripts/stage_deps.py`` prints, per stage of dvc.yaml, the ``medrov/`` files its command imports and
whether the stage lists exactly those; exit 1 when one does not (``tests/unit/test_stage_deps.py`` checks the
same). The derivation over-approximates on purpose: every module a command could import is a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "medrov"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for file in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(file.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = file
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The package module an imported dotted name means (a name defined inside a module means that module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_in(node: ast.AST, module: str, known: dict[str, Path]) -> set[str]:
    """The package modules imported anywhere under ``node`` (of ``module``), its own parent packages aside."""
    is_package = known[module].name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            targets = [alias.name for alias in sub.names]
        elif isinstance(sub, ast.ImportFrom):
            base = sub.module or ""
            if sub.level:  # relative: from this package, up level - 1
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - (sub.level - 1)], *([base] if base else [])])
            # `from medrov import tracking` imports the module medrov.tracking, not only the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in sub.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, known) if target.split(".")[0] == PACKAGE else None
            if resolved and resolved != module and not module.startswith(resolved + "."):
                found.add(resolved)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body."""
    known = modules(root)
    return {name: imports_in(ast.parse(file.read_text(), str(file)), name, known) for name, file in known.items()}


def reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    """``start`` and every module reachable from it."""
    seen, todo = set(start), list(start)
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _command_name(func: ast.FunctionDef) -> str | None:
    """The CLI name of a typer command function (``@app.command()`` or ``@app.command("name")``), else None."""
    for deco in func.decorator_list:
        if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and deco.func.attr == "command":
            if deco.args and isinstance(deco.args[0], ast.Constant):
                return str(deco.args[0].value)
            return func.name.replace("_", "-")
    return None


def command_roots(root: Path = ROOT) -> dict[str, set[str]]:
    """CLI command -> the modules it imports: its own body, plus what every command runs (the CLI module's
    top-level imports and its helper functions: start-up, error handling, metrics files)."""
    known = modules(root)
    tree = ast.parse(known[f"{PACKAGE}.cli"].read_text())
    common = {f"{PACKAGE}.cli", f"{PACKAGE}.__main__"}
    commands: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (name := _command_name(node)):
            commands[name] = imports_in(node, f"{PACKAGE}.cli", known)
        elif isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom)):
            common |= imports_in(node, f"{PACKAGE}.cli", known)
    return {name: found | common for name, found in commands.items()}


def files_of(mods: set[str], root: Path = ROOT) -> set[str]:
    """The files (relative to ``root``) of modules, their parent packages' ``__init__`` (run on import) and the
    data files shipped inside their packages (``*.yaml``: the catalogue)."""
    known = modules(root)
    out: set[str] = set()
    for mod in mods:
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):
            file = known.get(".".join(parts[:i]))
            if file is not None:
                out.add(file.relative_to(root).as_posix())
                if file.name == "__init__.py":
                    out |= {f.relative_to(root).as_posix() for f in file.parent.glob("*.yaml")}
    return out


def stage_code(root: Path = ROOT) -> dict[str, set[str]]:
    """dvc.yaml stage -> the package files its ``medrov <command>`` imports (derived)."""
    graph = import_graph(root)
    # the CLI's arrows are per command (command_roots): walking the module would give every stage every command
    graph[f"{PACKAGE}.cli"] = graph[f"{PACKAGE}.__main__"] = set()
    # a sub-app the CLI mounts (``medrov sources ...``) runs its module body at start-up, its commands' bodies
    # only when called: no stage calls them
    known = modules(root)
    for module, file in known.items():
        if module != f"{PACKAGE}.cli" and file.name.startswith("cli_"):
            tree = ast.parse(file.read_text())
            body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and _command_name(n))]
            graph[module] = set().union(*(imports_in(n, module, known) for n in body))
    roots = command_roots(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        words = str(stage["cmd"]).split()
        if words[0] != PACKAGE:
            continue
        out[name] = files_of(reachable(graph, roots[words[1]]), root)
    return out


def listed_code(root: Path = ROOT) -> dict[str, set[str]]:
    """dvc.yaml stage -> the package files and folders its ``deps`` list."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {
        name: {str(d) for d in stage.get("deps", []) if str(d).startswith(f"{PACKAGE}/")}
        for name, stage in stages.items()
    }


def main() -> int:
    derived, listed = stage_code(), listed_code()
    ok = True
    for stage, files in derived.items():
        extra, missing = sorted(listed[stage] - files), sorted(files - listed[stage])
        ok &= not extra and not missing
        print(f"{stage}: {len(files)} files{'' if extra or missing else ' (dvc.yaml agrees)'}")
        for file in sorted(files):
            print(f"      - {file}")
        if missing:
            print(f"  missing from dvc.yaml: {missing}")
        if extra:
            print(f"  listed but not imported: {extra}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
