"""`import edgekit` and `edgekit --help` / `profiles list` must not load the heavy runtimes."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["torch", "executorch", "onnxruntime", "onnx", "litert_torch", "ai_edge_litert", "tensorflow"]

CHECK = """
import sys
from click.testing import CliRunner
import edgekit, edgekit.cli, edgekit.plan, edgekit.profiles
from edgekit.cli import cli
for args in (["--help"], ["profiles", "list"], ["profiles", "show", "pixel8"], ["build", "-d", "pixel8", "--dry-run"],
             ["serve", "--help"], ["results", "--help"], ["quantize-report", "--help"]):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, (args, r.output)
print(",".join(sorted(m for m in {heavy} if m in sys.modules)))
"""


def test_cli_start_up_imports_no_heavy_runtime(root):
    out = subprocess.run([sys.executable, "-c", CHECK.format(heavy=HEAVY)], capture_output=True, text=True,
                         cwd=root, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at start-up: {out.stdout}"


def _import_graph(root) -> dict[str, set[str]]:
    """Module -> the edgekit modules it imports, at the top or inside functions (a lazy import is still a
    dependency). The package root ``edgekit`` is left out: it holds only ``__version__`` and the lazy API."""
    import ast

    packages = {"edgekit": root / "edgekit", "edgekit_runner": root / "targets" / "runner" / "edgekit_runner"}
    files = {}
    for pkg, folder in packages.items():
        for f in folder.rglob("*.py"):
            parts = [pkg, *f.relative_to(folder).with_suffix("").parts]
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    files.pop("edgekit")
    graph = {}
    for module, f in files.items():
        names = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        graph[module] = {n for n in names if n in files and n != module}
    return graph


def test_no_module_imports_one_that_imports_it_back(root):
    """No import cycle among edgekit's modules (project <-> distill.project and quantize.backends <->
    quantize.sensitivity were the last two): each module can be read, tested and imported on its own."""
    graph = _import_graph(root)
    assert "edgekit.distill.spec" in graph["edgekit.project"]  # the graph does see imports

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, deps in graph.items() for b in deps if reaches(b, a))
    assert cycles == []
