"""The package's import structure, read from the source (AST), not by importing it.

- Layers: encoder → index → retrieval → inpaint → cli, each importing only the ones below it
  (README, Layout), at module level *and* inside functions. The shared root modules (``errors``,
  ``meta``) sit below every layer; the root package (the public API, ``skullsearch/__init__``)
  above all but the CLI, which is a thin shell over it.
- No import cycle among module-level imports (``from pkg import submodule`` counts as importing
  the submodule), nor among all imports, those inside functions included.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("encoder", "index", "retrieval", "inpaint", "cli")
SHARED = ("skullsearch.errors", "skullsearch.meta")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", "demo", "docs") or rel.parts[0].startswith("."):
            continue
        name = ".".join(("skullsearch", *rel.with_suffix("").parts))
        out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def _imports(path: Path, module_level_only: bool) -> list[tuple[str, int]]:
    """(imported skullsearch module, line) pairs of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("skullsearch")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("skullsearch"):
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            found += [(m, node.lineno) for m in subs] or [(node.module, node.lineno)]
    return found


def _rank(module: str) -> int:
    """Layer of a module: -1 shared root modules, 0..4 the layers, 5 the root package (API)."""
    if module == "skullsearch":
        return 5
    if module in SHARED:
        return -1
    part = module.split(".")[1]
    return LAYERS.index(part) if part in LAYERS else -1


def test_the_package_is_found():
    assert "skullsearch.cli.app" in MODULES and "skullsearch.encoder.face_model" in MODULES
    assert len(MODULES) > 50


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_layer_above_it(layer):
    bad = []
    for mod, path in MODULES.items():
        if _rank(mod) != LAYERS.index(layer):
            continue
        for target, line in _imports(path, module_level_only=False):
            allowed = _rank(target) <= _rank(mod) or (layer == "cli" and target == "skullsearch")
            if not allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_module_level_import_cycles():
    graph = {m: {t for t, _ in _imports(p, module_level_only=True) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rules can fail: a function-level upward import in a made-up encoder module is found."""
    p = tmp_path / "bad.py"
    p.write_text("def f():\n    from skullsearch.retrieval.query import query\n")
    targets = [t for t, _ in _imports(p, module_level_only=False)]
    assert "skullsearch.retrieval.query" in targets
    assert _rank("skullsearch.retrieval.query") > _rank("skullsearch.encoder.bad")
    assert [t for t, _ in _imports(p, module_level_only=True)] == []


def test_opening_a_gallery_imports_no_torch():
    """`skullsearch info` and the catalog need no torch (about 1.5 s of start-up): the gallery,
    its catalog and the code layout import without it (benchmarks/cli_speed.py times it)."""
    import subprocess
    import sys

    code = ("import sys, skullsearch.index.gallery, skullsearch.index.persons, skullsearch.encoder.code\n"
            "print(','.join(m for m in ('torch', 'faiss', 'dlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _knots(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_inside_functions_form_no_cycle():
    """Imports run one way also inside functions (issue 14 untied the last knot: building,
    annotating and calibrating a face model)."""
    graph = {m: {t for t, _ in _imports(p, module_level_only=False) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    knots = _knots(graph)
    assert not knots, \
        "import cycles (also inside functions):\n" + "\n".join(" ↔ ".join(sorted(k)) for k in knots)
    # the checker finds a knot
    assert _knots({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_every_public_name_resolves():
    """Each name of ``skullsearch.__all__`` loads from the module it is listed under (first use)."""
    import skullsearch

    for name in skullsearch.__all__:
        assert getattr(skullsearch, name) is not None, name
    from skullsearch.retrieval.extended import extend
    from skullsearch.retrieval.profile import profile_image

    assert skullsearch.profile_image is profile_image and skullsearch.extend is extend
