"""torch.export, with its refusals turned into one-line errors that name the culprit."""

from __future__ import annotations

import os
import re
from typing import Any

from edgekit.errors import ExportError

_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)')


def export_program(model: Any, example_inputs: tuple) -> Any:
    """``torch.export.export`` the model in eval mode; raise ExportError naming what failed.

    The message keeps torch's own first line (it names the operator or the
    data-dependent expression) and the user's source line it points at.
    """
    import torch

    if not isinstance(model, torch.fx.GraphModule):  # exported/quantized graphs refuse .eval()
        model = model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, example_inputs, strict=False)
    except Exception as e:  # torch raises many types here; all mean "cannot export"
        raise ExportError(f"torch.export cannot trace {type(model).__name__}.forward: {summarize(e)}") from e


def summarize(e: BaseException) -> str:
    """First meaningful line of an exception, plus the user frame it names, if any."""
    text = str(e).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    first = first[:300]
    frames = [m for m in _USER_FRAME.finditer(text) if "site-packages" not in m.group(1)]
    if not frames:
        tb, user = e.__traceback__, None
        while tb is not None:  # fall back to the deepest frame in the user's own files
            fname = tb.tb_frame.f_code.co_filename
            if os.path.isfile(fname) and "site-packages" not in fname and f"{os.sep}edgekit{os.sep}" not in fname:
                user = f"{fname}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}"
            tb = tb.tb_next
        return f"{type(e).__name__}: {first}" + (f" (at {user})" if user else "")
    f = frames[-1]
    return f"{type(e).__name__}: {first} (at {f.group(1)}:{f.group(2)} in {f.group(3)}: {f.group(4).strip()})"


def export_train_graph(model: Any, example: tuple) -> Any:
    """A graph for training: the batch dimension dynamic (batch norm switches to its training
    form through torchao's move_exported_model_to_train in the training loop)."""
    import copy

    import torch

    x = example[0]
    batch2 = (torch.cat([x[:1], x[:1]]),) + tuple(example[1:])
    dims = ({0: torch.export.Dim("batch", min=1, max=1 << 16)}, *([None] * (len(example) - 1)))
    try:  # a copy: training must not change the caller's fp32 model
        graph = torch.export.export(copy.deepcopy(model).eval(), batch2, dynamic_shapes=dims, strict=False)
    except Exception as e:
        raise ExportError(f"torch.export cannot trace {type(model).__name__} for QAT with a dynamic batch: "
                          f"{summarize(e)}") from e
    return graph.module()
