"""The package's layers, read from its import statements (no module is imported).

- ``errors`` and ``config`` sit at the bottom; ``backends`` and ``core`` import no front end;
- ``local`` (the E2B-compatible service) imports nothing else of ``e2b_kernel``, and the rest
  reaches it only through the functions that start it and ``local.host_dirs`` (the user's own
  folder, where the kernel keeps its leases and the service its state);
- no import cycle exists between modules (imports under ``if TYPE_CHECKING:`` do not count);
- and one check that does import: the kernel starts without the E2B SDK.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "e2b_kernel"
FRONT_ENDS = ("e2b_kernel.kernel", "e2b_kernel.magic", "e2b_kernel.executor", "e2b_kernel.cli")
LOCAL_ENTRY_POINTS = {"start_in_thread", "start_subprocess"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _parse(source: str) -> ast.AST:
    """ast.parse, again after CPython 3.11's "AST constructor recursion depth mismatch".

    That SystemError is a CPython bug (its recursion counter is shared with other threads),
    which services left running in this worker's threads by earlier tests can trigger.
    """
    for _ in range(3):
        try:
            return ast.parse(source)
        except SystemError:
            continue
    return ast.parse(source)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_of(name: str) -> list[tuple[str, set[str]]]:
    """(imported module, names taken from it) for every e2b_kernel import of module ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    edges: list[tuple[str, set[str]]] = []
    for node in _runtime_imports(_parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges += [(a.name, set()) for a in node.names if a.name.startswith("e2b_kernel")]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        if not base.startswith("e2b_kernel"):
            continue
        names = {a.name for a in node.names}
        submodules = {n for n in names if f"{base}.{n}" in MODULES}
        edges += [(f"{base}.{n}", set()) for n in submodules]
        if names - submodules:
            edges.append((base, names - submodules))
    return edges


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("layer", ["e2b_kernel.core", "e2b_kernel.backends"])
def test_core_layers_import_no_front_end(layer: str) -> None:
    bad = [
        (module, target)
        for module in MODULES
        if _within(module, layer)
        for target, _ in imports_of(module)
        if any(_within(target, front) for front in FRONT_ENDS)
    ]
    assert bad == []


def test_errors_and_config_are_the_bottom() -> None:
    assert [t for t, _ in imports_of("e2b_kernel.errors")] == []
    assert [t for t, _ in imports_of("e2b_kernel.config")] == ["e2b_kernel.errors"]


def test_local_imports_nothing_else_of_the_package() -> None:
    bad = [
        (module, target)
        for module in MODULES
        if _within(module, "e2b_kernel.local")
        for target, _ in imports_of(module)
        if not _within(target, "e2b_kernel.local")
    ]
    assert bad == []


def test_the_rest_reaches_local_only_through_its_start_functions() -> None:
    bad = [
        (module, target, names)
        for module in MODULES
        if not _within(module, "e2b_kernel.local")
        for target, names in imports_of(module)
        if _within(target, "e2b_kernel.local")
        and target != "e2b_kernel.local.host_dirs"
        and (target != "e2b_kernel.local" or not names <= LOCAL_ENTRY_POINTS)
    ]
    assert bad == []


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _ in imports_of(m) if t in MODULES and t != m} for m in MODULES}
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def walk(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                walk(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_the_checker_sees_a_cycle_and_a_layer_breach() -> None:
    """The rules above are not vacuous: the parser finds real edges of this package."""
    targets = {t for t, _ in imports_of("e2b_kernel.magic.magics")}
    assert "e2b_kernel.core" in targets and "e2b_kernel.magic.commands" in targets
    assert ("e2b_kernel.local", {"start_in_thread"}) in imports_of("e2b_kernel.backends.handles")


def _packages_imported_by(statement: str, packages: tuple[str, ...]) -> list[str]:
    """Which of ``packages`` (top-level names) a fresh interpreter imports to run ``statement``."""
    code = (
        f"import sys; {statement}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({packages!r})))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(run.stdout.strip())  # type: ignore[no-any-return]


def test_the_kernel_starts_without_importing_the_sdk() -> None:
    """The E2B SDK's import (~0.3 s) runs beside the private service's start, on a worker
    thread, instead of before the kernel can launch that service (core/sdk.py)."""
    statement = "import e2b_kernel.kernel.kernel, e2b_kernel.magic"
    assert _packages_imported_by(statement, ("e2b", "e2b_code_interpreter")) == []


def test_the_kernels_launcher_imports_nothing_heavy() -> None:
    """``python -m e2b_kernel`` launches its private service before its own imports (see
    backends/early.py): asyncio, traitlets, psutil, ipykernel, jupyter_client or the E2B SDK
    there would hold the service back by a tenth of a second."""
    heavy = ("asyncio", "traitlets", "psutil", "ipykernel", "jupyter_client", "e2b")
    assert _packages_imported_by("from e2b_kernel.backends import launch_early", heavy) == []
