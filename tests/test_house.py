"""The house: the package's import graph keeps its layers (docs/development.md).

Every import statement counts, wherever it stands (inside functions too). The checks:

* no circle of imports between modules (the package's face, ``jacobians/__init__.py``, is
  left out: it imports everything and nothing imports it back);
* no import from a lower layer to a higher one (:data:`LAYERS`);
* no ``_private`` name imported from another subpackage;
* no module over 500 lines;
* no run of 10 or more identical lines in two places of the package.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections import defaultdict

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jacobians"
TOP = "jacobians"
MAX_LINES = 500
RUN = 10

#: layer of each subpackage or top-level module, bottom (0) to top; a module imports only
#: from its own layer or below
LAYERS = {
    # numerics and kernels, and the dispatch on the array type that backends register with
    "numerics": 0,
    "sampling": 0,  # the public path of numerics.sampling
    "_kernels": 0,
    "backend": 0,
    "xp": 0,  # the generic (array API) path's namespaces, shims and counter-based uniforms
    "domains": 0,
    "registry": 0,
    # structured operators and the contraction
    "operators": 1,
    "contract": 1,
    # activations and losses
    "activations": 2,
    "losses": 2,
    # pair rules (and the public module of the fused rules that re-exports them)
    "rules": 3,
    "fused": 3,
    # the head, the last layer
    "head": 4,
    "second_order": 4,
    "fisher": 4,
    "curvature": 4,  # the public face of the second order: re-exports rules and head layer
    "last_layer": 5,
    "laplace": 5,  # last-layer Laplace and influence functions, on linear_curvature
    # backends' implementations: the top floor of the library
    "_dask": 6,
    "_arrays": 6,
    # adapters to a framework's autograd (import the framework)
    "torch": 6,
    "jax": 6,
    # verification
    "numerical": 7,
    "testing": 7,
    "checks": 7,
    # commands
    "cli": 8,
    "bench": 8,
    "__main__": 8,
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path):
    """``(target module, imported name or None, line)`` for every import of the package."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == TOP:
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != TOP:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                yield (sub, None, node.lineno) if sub in MODULES else (mod, a.name, node.lineno)


def _resolve(target: str) -> str | None:
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in MODULES else None


def _unit(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graph():
    edges = defaultdict(set)
    found = []
    for name, path in MODULES.items():
        for target, imported, line in _imports(name, path):
            resolved = _resolve(target)
            if resolved is None or resolved == name:
                continue
            edges[name].add(resolved)
            found.append((name, resolved, imported, line))
    return edges, found


EDGES, IMPORTS = _graph()


def _circles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    missing = sorted({_unit(m) for m in MODULES if m != TOP} - set(LAYERS))
    assert not missing, f"give these a layer in tests/test_house.py LAYERS: {missing}"


def test_no_circle_of_imports():
    graph = {m: {t for t in ts if t != TOP} for m, ts in EDGES.items() if m != TOP}
    assert _circles(graph) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = [
        f"{src} (layer {LAYERS[_unit(src)]}) line {line} imports {dst} (layer {LAYERS[_unit(dst)]})"
        for src, dst, _, line in IMPORTS
        if src != TOP and dst != TOP and LAYERS[_unit(dst)] > LAYERS[_unit(src)]
    ]
    assert upward == []


def test_no_private_name_from_another_subpackage():
    private = [
        f"{src} line {line} imports {imported} from {dst}"
        for src, dst, imported, line in IMPORTS
        if imported
        and imported.startswith("_")
        and not imported.startswith("__")
        and _unit(src) != _unit(dst)
    ]
    assert private == []


def test_no_module_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


_SKIP = re.compile(r"^(#.*|[\[\](){},:]*|(from|import) .*|\"\"\"|\"|'''|)$")


def _code_lines(path: pathlib.Path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = " ".join(line.split())
        if not _SKIP.match(text):
            yield number, text


def test_no_run_of_ten_repeated_lines():
    places = defaultdict(list)
    for name, path in MODULES.items():
        lines = list(_code_lines(path))
        for i in range(len(lines) - RUN + 1):
            window = tuple(text for _, text in lines[i : i + RUN])
            places[window].append((name, lines[i][0]))
    repeated = []
    for where in places.values():
        # runs that overlap themselves inside one module (a long run is many windows) count once
        distinct = []
        for name, line in where:
            if not any(n == name and abs(line - ln) < RUN for n, ln in distinct):
                distinct.append((name, line))
        if len(distinct) > 1:
            repeated.append(distinct)
    assert repeated == [], f"{len(repeated)} repeated runs of {RUN} lines, e.g. {repeated[:3]}"


@pytest.mark.parametrize("layer", sorted(set(LAYERS.values())))
def test_layers_are_listed_in_the_development_page(layer):
    text = (PACKAGE.parent / "docs" / "development.md").read_text()
    units = [u for u, n in LAYERS.items() if n == layer and u != "__main__"]
    assert any(u.strip("_") in text for u in units), units
