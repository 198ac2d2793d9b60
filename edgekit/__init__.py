"""edgekit: take a PyTorch model to a phone or a board, smaller, faster and proven.

Importing edgekit is cheap: torch, ExecuTorch, ONNX Runtime and LiteRT are
imported inside the functions that need them, so ``edgekit --help`` stays fast.
"""

__version__ = "0.1.0"
