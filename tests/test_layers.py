"""The project's layers, checked on its source: no import runs up a layer, no two files import
each other (directly or round a circle), and no app below routing writes into the pipeline's
request object (`routing.call.Call`, a parameter named `call`).

Every `import` and `from ... import` of every module of the apps (migrations left out), at
module level or inside a function, resolved to a project module, is an edge. The layers, from
the ground up, are `LAYERS`; a module belongs to the first entry whose prefix it starts with.
docs/architecture.md "Layers" describes them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("kernel", "gateway_site", "audit", "operators", "providers", "accounting", "caching",
        "guardrails", "feedback", "routing", "batches", "requestlogs")

# (layer, module prefixes), bottom first. A module belongs to the layer of the longest prefix it
# starts with, and may import its own layer and those below. The kernel (errors, event loops,
# database and Redis access, HTTP helpers, metrics, logs) imports no app. Site wiring (settings,
# URLconfs, ASGI and Celery apps, server workers, management commands of the site) may import
# anything.
WIRING = (
    "gateway_site", "operators.urls", "accounting.urls", "feedback.urls", "routing.urls",
    "caching.urls", "providers.urls", "guardrails.urls", "audit.urls", "batches.urls",
)
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kernel", ("kernel",)),
    ("audit", ("audit",)),
    ("operators", ("operators",)),
    ("providers", ("providers",)),
    ("accounting", ("accounting",)),
    ("features", ("caching", "guardrails", "feedback")),
    ("routing", ("routing",)),
    ("batches", ("batches",)),
    ("dashboards", ("requestlogs",)),
    ("wiring", WIRING),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py") if (ROOT / app).is_dir() else ():
            if "migrations" in path.parts:
                continue
            modules[_module_name(path)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    modules = project_modules()
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, modules)
                if target and target != module:
                    targets.add(target)
        edges[module] = targets
    return edges


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_no_import_runs_up_a_layer():
    edges = import_edges()
    upward = sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in edges.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )
    assert upward == []


def test_no_two_modules_import_each_other_even_round_a_circle():
    assert cycles(import_edges()) == []


def test_the_scan_sees_function_level_imports_and_the_checks_can_fail():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    # `caching.semantic` imports inside a function; the scan must see such imports.
    source = "def f():\n    from routing import pipeline\n"
    found = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert found and found[0].module == "routing"


# --- the pipeline's request object is routing's -----------------------------------------------------
# The apps under routing take values and return values (a cache decision, a guard result); they
# may read the `call` they are handed but never write into it.
CALL_READERS = ("caching", "guardrails", "accounting", "providers", "feedback")
MUTATING_METHODS = {
    "append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear", "remove", "add", "discard",
}


def _on_call(node: ast.AST) -> bool:
    """Whether `node` is `call.<attr>` (or `self.call.<attr>`), or an item or attribute of it,
    however deep."""
    hops = 0
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if hops and isinstance(node, ast.Attribute) and node.attr == "call":
            return True
        hops += isinstance(node, ast.Attribute)
        node = node.value
    return hops > 0 and isinstance(node, ast.Name) and node.id == "call"


def _targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.Assign, ast.Delete)):
        found = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        found = [node.target]
    elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        found = [node.target]
    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        found = [node.optional_vars]
    elif isinstance(node, ast.NamedExpr):
        found = [node.target]
    else:
        return []
    flat = []
    while found:
        target = found.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            found += target.elts
        elif isinstance(target, ast.Starred):
            found.append(target.value)
        else:
            flat.append(target)
    return flat


def call_writes(source: str) -> list[int]:
    """The lines of `source` that write into a `call`: assign or delete `call.<attr>` (or an item
    of it), call a mutating method on it, or `setattr(call, ...)`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        lines += [target.lineno for target in _targets(node) if _on_call(target)]
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in MUTATING_METHODS and _on_call(func.value):
                lines.append(node.lineno)
            elif (isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and node.args
                  and isinstance(node.args[0], ast.Name) and node.args[0].id == "call"):
                lines.append(node.lineno)
    return sorted(lines)


def test_no_app_below_routing_writes_into_the_call():
    writes = [
        f"{path.relative_to(ROOT)}:{line}"
        for app in CALL_READERS
        for path in sorted((ROOT / app).rglob("*.py"))
        if "migrations" not in path.parts
        for line in call_writes(path.read_text())
    ]
    assert writes == []


def test_the_call_write_scan_can_fail():
    source = """
def f(call, other):
    call.cache = "hit"
    call.usage, x = None, 1
    call.extra_headers["x-gateway-cache"] = "hit"
    call.guard_events.append({})
    call.guard_events += [{}]
    call.plan.deployments = []
    setattr(call, "payload", {})
    other.cache = "hit"
    call = other
    print(call.payload, call.guard_events[0])
    events = call.guard_events
    self.call = call
    self.call.guard_events.extend([])
    for call.usage in ():
        pass
    with open(x) as call.log:
        pass
"""
    assert call_writes(source) == [3, 4, 5, 6, 7, 8, 9, 15, 16, 18]
