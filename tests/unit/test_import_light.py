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
