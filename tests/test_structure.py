"""The shape of the code, read from the files (ast, nothing imported): no import cycles between files, no import from
a lower layer to a higher one, and comments that explain code rather than refer to issue numbers."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where each package's files are: setup.cfg installs the top-level pipelines/ folder as hfdiff.pipelines.
PACKAGE_DIRS = {"hfdiff.pipelines": ROOT / "pipelines", "hfdiff": ROOT / "hfdiff"}

# The layers, from the ground up. A file may import files of its own layer and of the layers below it, never one
# above. Imports inside functions count too: a lazy import is still a dependency.
LAYERS = [
    (
        "foundations: models, schedulers, data, text encoding, image and scheduler helpers, CUDA helpers, file swaps",
        [
            "hfdiff/__init__.py",
            "hfdiff/data/*",
            "hfdiff/models/*",
            "hfdiff/schedulers/*",
            "hfdiff/text.py",
            "hfdiff/cuda.py",
            "hfdiff/cpu_threads.py",
            "hfdiff/errors.py",
            "hfdiff/extras.py",
            "hfdiff/local_paths.py",
            "hfdiff/folder_swap.py",
            "hfdiff/demo_app.py",
            "pipelines/text_encoding.py",
            "pipelines/image_processing.py",
            "pipelines/scheduler_steps.py",
        ],
    ),
    (
        "what the pipeline delegates to where hfdiff is installed: loading, saving, uploading, the fast sampler",
        ["hfdiff/folder_loading.py", "hfdiff/folder_saving.py", "hfdiff/hub.py", "hfdiff/fast_sampling.py"],
    ),
    ("the pipeline", ["pipelines/__init__.py", "pipelines/pipeline_sprite_diffusion.py"]),
    (
        "what uses pipelines: loading one for the CLI and the demo, named samplers, training, evaluation, figures",
        [
            "hfdiff/pipeline_loading.py",
            "hfdiff/samplers.py",
            "hfdiff/visualize.py",
            "hfdiff/training/*",
            "hfdiff/evaluate.py",
            "hfdiff/evaluate_text.py",
        ],
    ),
    ("front ends", ["hfdiff/demo.py", "hfdiff/cli.py"]),
]


def source_files() -> list[Path]:
    return sorted([*(ROOT / "hfdiff").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")])


def module_file(module: str) -> Path | None:
    """The file of a dotted hfdiff module name (a package's __init__.py), or None outside hfdiff."""
    for package, folder in PACKAGE_DIRS.items():
        if module == package or module.startswith(package + "."):
            path = folder.joinpath(*module[len(package) :].lstrip(".").split(".")) if module != package else folder
            if path.with_suffix(".py").is_file():
                return path.with_suffix(".py")
            if (path / "__init__.py").is_file():
                return path / "__init__.py"
            return None
    return None


def module_name(path: Path) -> str:
    for package, folder in PACKAGE_DIRS.items():
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            return ".".join([package, *parts[:-1]] + ([] if parts[-1] == "__init__" else [parts[-1]]))
    raise AssertionError(path)


def lazy_exports() -> dict[str, str]:
    """hfdiff/__init__.py's name -> module table: `from hfdiff import SpriteDiffusionPipeline` imports that module."""
    tree = ast.parse((ROOT / "hfdiff" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_LAZY_EXPORTS":
            return ast.literal_eval(node.value)
    raise AssertionError("hfdiff/__init__.py has no _LAZY_EXPORTS")


def imported_files(path: Path) -> set[Path]:
    """The hfdiff files that `path` imports, anywhere in it (module level, functions, try blocks, TYPE_CHECKING)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    exports = lazy_exports()
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            modules = []
            for alias in node.names:  # `from package import submodule` imports the submodule's file
                submodule = f"{base}.{alias.name}"
                if module_file(submodule) is not None:
                    modules.append(submodule)
                elif base == "hfdiff" and alias.name in exports:
                    modules.append(exports[alias.name])
                else:
                    modules.append(base)
        else:
            continue
        for module in modules:
            target = module_file(module)
            if target is not None and target != path:
                targets.add(target)
    return targets


def import_graph() -> dict[Path, set[Path]]:
    return {path: imported_files(path) for path in source_files()}


def layer_of(path: Path) -> int:
    relative = path.relative_to(ROOT).as_posix()
    matches = [i for i, (_, patterns) in enumerate(LAYERS) for pattern in patterns if fnmatch(relative, pattern)]
    assert matches, f"{relative} is in no layer of tests/test_structure.py's LAYERS: add it where it belongs"
    return matches[0]


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """The strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
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
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_that_matter():
    """The walk itself: edges that must be there are found, so the checks below cannot pass on an empty graph."""
    graph = import_graph()
    pipeline = ROOT / "pipelines" / "pipeline_sprite_diffusion.py"
    assert ROOT / "hfdiff" / "folder_loading.py" in graph[pipeline]  # inside a method, inside try
    assert ROOT / "pipelines" / "text_encoding.py" in graph[pipeline]  # relative
    assert ROOT / "pipelines" / "__init__.py" in graph[ROOT / "hfdiff" / "pipeline_loading.py"]
    assert ROOT / "hfdiff" / "training" / "streaming.py" in graph[ROOT / "hfdiff" / "training" / "data.py"]
    assert ROOT / "hfdiff" / "cuda.py" in graph[ROOT / "hfdiff" / "training" / "step.py"]  # `from ..cuda import`
    assert ROOT / "pipelines" / "__init__.py" in graph[ROOT / "hfdiff" / "training" / "loop.py"]  # via hfdiff's table
    assert cycles({1: {2}, 2: {3}, 3: {1}, 4: {1}}) == [[3, 2, 1]]


def test_no_import_cycles_between_files():
    found = cycles(import_graph())
    described = [" -> ".join(str(path.relative_to(ROOT)) for path in component) for component in found]
    assert not found, f"import cycles: {described}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    back_edges = [
        f"{path.relative_to(ROOT)} (layer {layer_of(path)}) imports {target.relative_to(ROOT)} "
        f"(layer {layer_of(target)}: {LAYERS[layer_of(target)][0]})"
        for path, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(path)
    ]
    assert not back_edges, "\n".join(back_edges)


def test_the_exported_pipeline_code_imports_hfdiff_only_where_diffusers_skips_it():
    """The pipeline folder travels to diffusers-only users: at module level it imports no hfdiff module, and inside
    methods only in a `try` block (diffusers' check of a remote module's requirements skips those)."""
    for path in (ROOT / "pipelines").glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfdiff"):
                assert id(node) in guarded, f"{path.name}:{node.lineno} imports {node.module} outside a try block"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("hfdiff") for alias in node.names), f"{path.name}:{node.lineno}"
        assert "import_module" not in path.read_text(encoding="utf-8"), f"{path.name}: an import the walk cannot see"


# An issue or pull-request number: "#12", "issue 12", "issues 3 and 4", "PR 7", "gh-12".
ISSUE_REFERENCE = re.compile(r"(?<![\w&])#\d+\b|\b(?:issues?|PRs?|pull requests?)\s+#?\d+|\bgh-\d+", re.IGNORECASE)


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(text).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found.append((node.body[0].lineno, docstring))
    return found


def test_comments_name_no_issue_numbers():
    """Comments and docstrings explain the code; the history of how it got there lives in git."""
    assert ISSUE_REFERENCE.search("see issue 29") and ISSUE_REFERENCE.search("(#12)")
    assert not ISSUE_REFERENCE.search("colour #ff0000, step 2 of 5")
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}"
        for path in source_files()
        for line, text in comments_and_docstrings(path)
        for match in ISSUE_REFERENCE.finditer(text)
    ]
    assert not hits, "\n".join(hits)
