"""Which code may import which, read from the source with `ast` (nothing is imported), so an
import inside a function counts as much as one at the top of a module.

`rentahal/` is plumbing: it knows no app, except its wiring (settings, URLs, ASGI), which
names the apps' entry points as any Django project's root does. `pools` and `accounts` are
the bottom apps and import no other app; `realms` may import both. No two apps, and no two
modules, import each other in a circle.
"""
import ast
import graphlib
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent

PLUMBING = "rentahal"
APPS = ("realms", "pools", "accounts", "federation")
WIRING = {"rentahal.settings", "rentahal.urls", "rentahal.asgi"}
BOTTOM_APPS = ("pools", "accounts")


def project_modules() -> dict[str, Path]:
    """Return every module of the plumbing and the apps, by dotted name."""
    modules = {}
    for package in (PLUMBING, *APPS):
        for path in sorted((PROJECT_DIR / package).rglob("*.py")):
            parts = path.relative_to(PROJECT_DIR).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def runtime_nodes(tree: ast.AST):
    """Yield every node except those under `if TYPE_CHECKING:`, which never runs: names
    imported there serve annotations only, so they make no import, and no circle."""
    for child in ast.iter_child_nodes(tree):
        if is_type_checking_block(child):
            yield from (runtime for orelse in child.orelse for runtime in [orelse, *runtime_nodes(orelse)])
            continue
        yield child
        yield from runtime_nodes(child)


def imports_of(name: str, path: Path) -> set[str]:
    """Return the dotted names a module imports when it runs, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pools import actions` imports the module pools.actions when there is one.
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return found


def app_of(module: str) -> str:
    return module.split(".")[0]


MODULES = project_modules()
IMPORTS = {name: imports_of(name, path) for name, path in MODULES.items()}


def imports_of_apps(importer_app: str, imported_apps) -> list[str]:
    """Return "module imports name" for each import by `importer_app` of one of `imported_apps`."""
    return sorted(
        f"{module} imports {imported}"
        for module, imported_names in IMPORTS.items()
        if app_of(module) == importer_app and module not in WIRING
        for imported in imported_names
        if app_of(imported) in imported_apps and imported in MODULES
    )


def test_plumbing_imports_no_app_outside_its_wiring():
    assert imports_of_apps(PLUMBING, APPS) == []


def test_pools_and_accounts_import_no_other_app():
    offending = []
    for app in BOTTOM_APPS:
        offending += imports_of_apps(app, [other for other in APPS if other != app])
    assert offending == []


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """Return one circle of the graph as its nodes in order, or [] when there is none."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


def test_no_apps_import_each_other_in_a_circle():
    graph: dict[str, set[str]] = {}
    for module, imported_names in IMPORTS.items():
        if module in WIRING:
            continue
        importer = app_of(module)
        graph.setdefault(importer, set()).update(
            app_of(imported) for imported in imported_names if imported in MODULES and app_of(imported) != importer
        )
    assert find_cycle(graph) == []


def test_no_modules_import_each_other_in_a_circle():
    graph = {
        module: {imported for imported in imported_names if imported in MODULES and imported != module}
        for module, imported_names in IMPORTS.items()
    }
    # A package's __init__ is imported with any of its modules; only its own imports count.
    for module in graph:
        graph[module] -= {package for package in graph[module] if module.startswith(package + ".")}
    assert find_cycle(graph) == []
