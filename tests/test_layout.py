"""The package layout is the architecture: layers import only downwards, modules never in a cycle,
and no private (underscore) name crosses a module boundary. Read from the source with `ast`."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minirun"

# Lowest first. A module may import from its own layer and the layers before it, never after.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("minirun.errors", "minirun.figures", "minirun.paths", "minirun.text")),
    ("layers", ("minirun.layers",)),
    ("models", ("minirun.models",)),
    ("checkpoints", ("minirun.checkpoints",)),
    ("engine", ("minirun.engine",)),
    ("methods", ("minirun.methods",)),
    ("eval", ("minirun.eval",)),
    ("bench", ("minirun.bench",)),
    ("cli", ("minirun.cli",)),
    ("api", ("minirun",)),  # the package root: `minirun.load`, `minirun.LLM`
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def lazy_homes(path: Path, name: str) -> dict[str, str]:
    """A package's lazily loaded names and the submodule each comes from (`minirun.methods` reads them from a
    `_HOMES` dict through `importlib`, which no import statement shows)."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["_HOMES"]:
            return {key: f"{name}.{home}" for key, home in ast.literal_eval(node.value).items()}
    return {}


def imports(path: Path, name: str, modules: dict[str, Path],
            homes: dict[str, dict[str, str]] | None = None) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in the file, function-level ones too; a name a
    package loads lazily counts as taken from its submodule (`homes`, by package)."""
    homes = homes or {}
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                home = homes.get(base, {}).get(alias.name)
                found.append((sub, []) if sub in modules else (home or base, [alias.name]))
    found += [(home, []) for home in homes.get(name, {}).values()] if path.name == "__init__.py" else []
    root = next(iter(modules)).split(".")[0]
    return [(m, names) for m, names in found if m == root or m.startswith(root + ".")]


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int:
    """Index of the layer with the longest prefix naming `module` (the root matches only itself)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            hit = module == prefix or (module.startswith(prefix + ".") and "." in prefix)
            if hit and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no declared layer: add it to LAYERS in tests/test_layout.py")
    return best


def graph(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module import graph, and every private name taken from another module."""
    modules = scan(package)
    homes = {name: lazy_homes(path, name) for name, path in modules.items() if path.name == "__init__.py"}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, names in imports(path, name, modules, homes):
            if target != name:
                edges[name].add(target)
            private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and target != name]
    return edges, private


def upward(edges: dict[str, set[str]], layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    out = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            s, t = layer_of(source, layers), layer_of(target, layers)
            if t > s:
                out.append(f"{source} ({layers[s][0]}) imports {target} ({layers[t][0]})")
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_sits_in_a_layer():
    for module in scan(PACKAGE):
        layer_of(module, LAYERS)


def test_no_import_from_a_higher_layer():
    edges, _ = graph(PACKAGE)
    assert upward(edges, LAYERS) == []


def test_no_import_cycle():
    edges, _ = graph(PACKAGE)
    assert find_cycle(edges) is None


def test_no_private_name_crosses_a_module_boundary():
    _, private = graph(PACKAGE)
    assert private == []


def _root(node: ast.AST) -> str | None:
    """The name a dotted expression starts from (`pkg` of `pkg.mod.attr`), or None."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses(path: Path, package: str = "minirun") -> list[str]:
    """`module._name` on an imported module of `package`, through any dotted path, and the same
    name given as a string to setattr/getattr/delattr (monkeypatch's included)."""
    tree = ast.parse(path.read_text())
    aliases = {a.asname or a.name.split(".")[-1] for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package for a in node.names}
    aliases |= {(a.asname or a.name.split(".")[0]) for node in ast.walk(tree) if isinstance(node, ast.Import)
                for a in node.names if a.name.split(".")[0] == package}
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    found = [f"{ast.unparse(node.value)}.{node.attr}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and private(node.attr) and _root(node.value) in aliases]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            name = node.args[1].value
            if func in ("setattr", "getattr", "delattr") and isinstance(name, str) and private(name) \
                    and _root(node.args[0]) in aliases:
                found.append(f"{func}({ast.unparse(node.args[0])}, {name!r})")
    return found


def test_no_private_attribute_of_another_minirun_module():
    """`module._name` on an imported minirun module counts too, in the package, its tests and benchmarks."""
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    offenders = [f"{path.relative_to(ROOT)}: {use}" for path in sorted(files) for use in private_uses(path)]
    assert offenders == []


def test_checker_catches_private_attributes_however_reached(tmp_path):
    planted = tmp_path / "t.py"
    planted.write_text("import minirun.layers.flex\nfrom minirun.layers import calibrate\n"
                       "minirun.layers.flex._state\ncalibrate._memo.clear()\nmonkeypatch.setattr(calibrate, '_memo', {})\n"
                       "calibrate.public\nimport os\nos._exit\n")
    assert private_uses(planted) == ["minirun.layers.flex._state", "calibrate._memo",
                                     "setattr(calibrate, '_memo')"]


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "pkg"
    for rel, text in files.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    return package


PLANTED_LAYERS = [("low", ("pkg.low",)), ("high", ("pkg.high",)), ("api", ("pkg",))]


def test_checker_catches_a_planted_cycle(tmp_path):
    package = _plant(tmp_path, {
        "__init__.py": "", "low/__init__.py": "",
        "low/a.py": "from pkg.low.b import thing\n",
        "low/b.py": "def thing():\n    from pkg.low import a  # a lazy import still closes the cycle\n",
    })
    edges, _ = graph(package)
    assert find_cycle(edges) == ["pkg.low.a", "pkg.low.b", "pkg.low.a"]


def test_checker_catches_a_cycle_through_a_lazily_loaded_name(tmp_path):
    """`from pkg.low import thing`, where pkg.low loads `thing` from pkg.low.b on first use, is an import of b."""
    package = _plant(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "import importlib\n_HOMES = {'thing': 'b'}\n",
        "low/a.py": "from pkg.low import thing\n",
        "low/b.py": "def thing():\n    from pkg.low.a import other\n",
    })
    edges, _ = graph(package)
    assert edges["pkg.low.a"] == {"pkg.low.b"} and edges["pkg.low"] == {"pkg.low.b"}
    assert find_cycle(edges) == ["pkg.low.b", "pkg.low.a", "pkg.low.b"]


def test_checker_catches_an_upward_import_and_a_private_name(tmp_path):
    package = _plant(tmp_path, {
        "__init__.py": "", "low/__init__.py": "", "high/__init__.py": "",
        "low/core.py": "from pkg.high.tool import _helper\n",
        "high/tool.py": "def _helper():\n    pass\n",
    })
    edges, private = graph(package)
    assert upward(edges, PLANTED_LAYERS) == ["pkg.low.core (low) imports pkg.high.tool (high)"]
    assert private == ["pkg.low.core imports pkg.high.tool._helper"]
    assert find_cycle(edges) is None


def test_an_undeclared_module_fails(tmp_path):
    package = _plant(tmp_path, {"__init__.py": "", "stray.py": ""})
    with pytest.raises(AssertionError, match="pkg.stray is in no declared layer"):
        for module in scan(package):
            layer_of(module, PLANTED_LAYERS)
