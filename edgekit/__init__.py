"""edgekit: take a PyTorch model to a phone or a board, smaller, faster and proven.

Importing edgekit is cheap: torch, ExecuTorch, ONNX Runtime and LiteRT are
imported inside the functions that need them, so ``edgekit --help`` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["Bundle", "__version__", "build"]


def __getattr__(name: str):  # the API is imported on first use, so that `import edgekit` stays light
    if name in ("build", "Bundle"):
        from edgekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
