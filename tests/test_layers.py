"""The repository's layers, enforced: imports flow one way, no circles, and imports inside functions only for heavy
or optional third-party packages (each with its reason below). An AST walk, no import is executed."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dice", "evaluation", "figures")

# Lowest first. A module belongs to the last layer whose name prefixes its own; it may import its own layer and lower ones.
LAYERS = (
    ("dice", "the method and the machinery: sharpener, families, methods, the step, training, sampling, files"),
    ("evaluation", "the metrics, the result record, Table 1 and its plot"),
    ("dice.testkit", "test tooling: tiny random pipelines, the single-file writer, the rehearsal, the plumbing demos"),
    ("dice.shapes_world", "the toy world: its data, model, evaluator, pretraining, shipped sharpener, demo and studies"),
    ("figures", "the paper's figures and analyses, over all of the above"),
)

# Third-party packages a function may import when it needs them, and why not at the top of the module.
LATE_IMPORTS = {
    "diffusers": "pulls in transformers and the pipeline classes (~5 s): a bad option is reported before that",
    "transformers": "the text encoders (seconds): imported with the model that needs them",
    "accelerate": "its launcher and process-group machinery (seconds): a bad option is reported before that",
    "matplotlib": "plots only: the training and sampling commands never draw one",
    "open_clip": "the CLIP score's network (~6 s): only its evaluator needs it",
    "hpsv2": "optional, HPS v2.1 only (not in requirements.txt)",
    "torch_fidelity": "FID's Inception network only",
    "torchvision": "its models pull in torch._dynamo (~1.3 s): only the training images' loader needs it",
    "torch._dynamo": "--compile only",
    "xformers": "optional, --enable_xformers_memory_efficient_attention only",
    "aiohttp": "ComfyUI's (the test host's) package, not this project's: the README's ComfyUI screenshot only",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str, path: Path, known: frozenset[str] = frozenset()):
    """(imported module, at module level?, line) for every import statement; ``from x import y`` counts x.y instead of
    x when x.y is a module (``from . import experiments`` imports dice.experiments, not all of dice)."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body} | {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try))
                                                      for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top_level, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, path, node)
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            for target in submodules or [base]:
                yield target, id(node) in top_level, node.lineno


def layer_of(module: str) -> int:
    return max(i for i, (prefix, _) in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))


def is_entry_point(path: Path, imported_by_others: set[str], module: str) -> bool:
    """A command line (``if __name__ == "__main__"``) that no other module imports: it may use every layer."""
    return '__name__ == "__main__"' in path.read_text() and module not in imported_by_others


def graph():
    modules = project_modules()
    known = frozenset(modules)
    edges = {m: [(t, top, line) for t, top, line in imports(m, p, known) if t in modules] for m, p in modules.items()}
    imported = {t for targets in edges.values() for t, _, _ in targets}
    library = {m for m, p in modules.items() if not is_entry_point(p, imported, m)}
    return modules, edges, library


def test_imports_flow_down_the_layers():
    modules, edges, library = graph()
    upward = [f"{modules[m].relative_to(REPO)}:{line} imports {t} ({LAYERS[layer_of(t)][0]} is above {LAYERS[layer_of(m)][0]})"
              for m in library for t, _, line in edges[m] if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)
    assert not [m for m in library for t, _, _ in edges[m] if t not in library], "a library module imports a command line"


def test_no_import_circles():
    modules, edges, library = graph()
    # Module-level imports only (a circle needs them); a package's __init__ counts as importing its parent package.
    follows = {m: {t for t, top, _ in edges[m] if top and t != m} for m in library}
    state, circles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(follows.get(m, ())):
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(follows):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def test_imports_inside_functions_only_for_heavy_packages():
    modules = project_modules()
    late = []
    for m in sorted(modules):  # command lines too
        for target, top, line in imports(m, modules[m], frozenset(modules)):
            if top or target.split(".")[0] == "__future__":
                continue
            if any(target == name or target.startswith(name + ".") for name in LATE_IMPORTS):
                continue
            late.append(f"{modules[m].relative_to(REPO)}:{line} imports {target} inside a function")
    assert not late, "\n".join(sorted(set(late)))


def test_every_layer_has_modules_and_a_reason():
    modules = project_modules()
    for prefix, reason in LAYERS:
        assert reason and any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix
