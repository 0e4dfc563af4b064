"""The import graph follows the data flow: no cycles, no import against the flow, no private names across packages.

storyboard → retrieval → structure → characters → render; index_builder writes what retrieval owns; the shared
home (``storyreel``) and its model zoo (``storyreel.models``) are below all of them. A package may import only
the packages upstream of it. Every ``import`` counts, at module level or inside a function, and so does a
lazy export of a package's ``__init__`` (its ``_EXPORTS`` table of ``name → module``).
"""

from __future__ import annotations

import ast
import textwrap
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("storyreel", "storyboard", "retrieval", "index_builder", "structure", "characters", "render", "evaluation",
            "toy_world")
# What each package may import (besides itself). The model zoo is the layer "storyreel.models".
ALLOWED = {
    "storyreel": set(),
    "storyreel.models": {"storyreel"},
    "storyboard": {"storyreel", "storyreel.models"},
    "retrieval": {"storyreel", "storyreel.models", "storyboard"},
    "index_builder": {"storyreel", "storyreel.models", "retrieval"},
    "structure": {"storyreel", "storyreel.models", "storyboard", "retrieval"},
    "characters": {"storyreel", "storyreel.models", "storyboard", "retrieval", "structure"},
    "render": {"storyreel", "storyreel.models", "storyboard", "retrieval", "structure", "characters"},
    # the evaluation reads what the render wrote
    "evaluation": {"storyreel", "storyreel.models", "storyboard", "retrieval", "structure", "characters", "render"},
    # the toy world trains the toy preset with every stage's own code, so it sits above all of them
    "toy_world": {"storyreel", "storyreel.models", "storyboard", "retrieval", "index_builder", "structure",
                  "characters", "render", "evaluation"},
}


def _layer(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not a project module)."""
    if module == "storyreel.models" or module.startswith("storyreel.models."):
        return "storyreel.models"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_exports(tree: ast.Module) -> list[str]:
    """The module names of an ``_EXPORTS = {"name": "module", ...}`` table."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                return [v.value for v in node.value.values if isinstance(v, ast.Constant)]
    return []


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """``module → modules it imports`` over the project packages under ``root``, and the private-name
    imports across packages (``from pkg.mod import _name`` where pkg is not the importer's package)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            modules[_module_name(path, root)] = path
    graph: dict[str, set[str]] = defaultdict(set)
    private = []

    def target(name: str) -> str | None:
        while name and name not in modules:  # "pkg.mod.attr" → "pkg.mod"
            name = name.rpartition(".")[0]
        return name or None

    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module]  # every module is a node
        for name in _lazy_exports(tree):
            if target(name):
                graph[module].add(target(name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                for alias in node.names:
                    if alias.name.startswith("_") and _layer(node.module) not in (None, _layer(module)):
                        private.append(f"{module} imports {node.module}.{alias.name}")
            else:
                continue
            for name in names:
                found = target(name)
                if found and found != module:
                    graph[module].add(found)
    return dict(graph), private


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imports in sorted(graph.items()):
        layer = _layer(module)
        for imported in sorted(imports):
            other = _layer(imported)
            if other != layer and other not in ALLOWED[layer]:
                problems.append(f"{module} imports {imported}: {layer} may import only "
                                f"{', '.join(sorted(ALLOWED[layer])) or 'nothing of the project'}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def check(root: Path) -> list[str]:
    graph, private = import_graph(root)
    return layering_problems(graph) + [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)] + private


def test_the_project_has_no_cycle_back_edge_or_private_import():
    graph, _ = import_graph(REPO)
    assert len(graph) > 80  # the walk found the project
    assert check(REPO) == []


def _fake_project(root: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_back_edge_against_the_data_flow_is_reported(tmp_path):
    root = _fake_project(tmp_path, {
        "storyboard/format.py": "def f():\n    from render.sampler import StructureGuidedSampler\n",
        "render/sampler.py": "from storyboard.format import f\n",
    })
    problems = check(root)
    assert any(p.startswith("storyboard.format imports render.sampler") for p in problems), problems
    assert "import cycle: render.sampler <-> storyboard.format" in problems


def test_the_shared_home_may_not_import_a_stage_nor_the_model_zoo(tmp_path):
    root = _fake_project(tmp_path, {
        "storyreel/errors.py": "import retrieval.library\n",
        "storyreel/hashing.py": "from storyreel.models import presets\n",
        "storyreel/models/presets.py": "from storyreel.errors import StoryreelError\n",
        "retrieval/library.py": "",
    })
    problems = check(root)
    assert any(p.startswith("storyreel.errors imports retrieval.library") for p in problems), problems
    assert any(p.startswith("storyreel.hashing imports storyreel.models.presets") for p in problems), problems
    assert not any(p.startswith("storyreel.models.presets") for p in problems), problems


def test_a_cycle_inside_a_package_and_through_a_lazy_export_is_reported(tmp_path):
    root = _fake_project(tmp_path, {
        "render/__init__.py": '_EXPORTS = {"render_story": "render.story"}\n',
        "render/story.py": "def go():\n    from render.ray_engine import run\n",
        "render/ray_engine.py": "def run():\n    from render import render_story\n",
    })
    problems = check(root)
    assert "import cycle: render <-> render.ray_engine <-> render.story" in problems, problems


def test_private_names_across_packages_are_reported(tmp_path):
    root = _fake_project(tmp_path, {
        "render/story.py": "from structure.extract import _check_within_clip\nfrom render.sheet import _font\n",
        "structure/extract.py": "def _check_within_clip():\n    pass\n",
        "render/sheet.py": "def _font():\n    pass\n",
    })
    problems = check(root)
    assert problems == ["render.story imports structure.extract._check_within_clip"]
