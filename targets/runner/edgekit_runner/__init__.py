"""edgekit's on-device runner: load a bundle, run it in its runtime, report.

Stdlib + numpy + the one runtime the bundle needs (ExecuTorch, onnxruntime, or
tflite-runtime / ai-edge-litert). It never imports edgekit, and imports torch
only for ExecuTorch bundles (ExecuTorch's Python runtime takes torch tensors).
The report schema lives here (:mod:`edgekit_runner.report`); the host imports it.

    python -m edgekit_runner path/to/bundle
"""

__version__ = "0.1.0"
