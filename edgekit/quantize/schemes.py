"""Quantization schemes: small frozen configs with a dict round trip.

A scheme says *what* to do; each exporter applies it with its backend's own
quantizer (PT2E XNNPACK / litert-torch, ONNX Runtime's quantize_static).

>>> scheme_from_dict(Int8Static(calib_samples=64).to_dict())
Int8Static(per_channel=True, calib_samples=64)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


class _Scheme:
    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.name, **asdict(self)}


@dataclass(frozen=True)
class Int8Static(_Scheme):
    """W8A8 post-training quantization: int8 symmetric weights (per-channel by default),
    8-bit activations with ranges from the calibration split."""

    name: ClassVar[str] = "int8"
    precision: ClassVar[str] = "int8"
    per_channel: bool = True
    calib_samples: int = 128


@dataclass(frozen=True)
class Int8QAT(_Scheme):
    """W8A8 quantization-aware training: PT2E fake-quant inserted by the backend's quantizer,
    fine-tuned on the train split, then converted like PTQ (ranges come from training)."""

    name: ClassVar[str] = "int8-qat"
    precision: ClassVar[str] = "int8"
    per_channel: bool = True
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    calib_samples: int = 0  # unused: QAT learns its ranges on the train split


@dataclass(frozen=True)
class Int8Dynamic(_Scheme):
    """int8 weights (symmetric, per-channel by default); activations quantized at run time from each
    batch's own range, so no calibration data is needed. Suits linear-heavy models.

    ``embeddings``: the transformer recipe (the planner picks it for int8 of a transformer task): only the
    linear layers, with activations quantized per token (XNNPACK), per block of weights (ONNX Runtime's
    MatMulNBits) or per tensor at run time (LiteRT), and the embedding tables int8 as well (in an encoder
    they are half the bytes). Static int8 activations lose too much on transformers: one scale per
    activation tensor, measured on MiniLM (see the README's embedding section)."""

    name: ClassVar[str] = "int8-dynamic"
    precision: ClassVar[str] = "int8"
    per_channel: bool = True
    calib_samples: int = 0  # unused: ranges are computed at run time
    embeddings: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not self.embeddings:  # the classifier recipe's dict is what it always was
            del d["embeddings"]
        return d


@dataclass(frozen=True)
class FP16(_Scheme):
    """Half-precision weights and activations (inputs and outputs stay float32)."""

    name: ClassVar[str] = "fp16"
    precision: ClassVar[str] = "fp16"
    calib_samples: int = 0


@dataclass(frozen=True)
class Int4WeightOnly(_Scheme):
    """4-bit linear weights, symmetric, one scale per ``group_size`` inputs (torchao). On XNNPACK
    the int4 GEMM takes int8 activations quantized at run time ("8da4w", as ExecuTorch ships LLMs):
    torchao's pure weight-only int4 lowers in ExecuTorch 1.5.1 but computes wrong outputs (measured)."""

    name: ClassVar[str] = "int4-weight-only"
    precision: ClassVar[str] = "int4-weight"
    group_size: int = 32
    calib_samples: int = 0


@dataclass(frozen=True)
class Int8WeightOnly(_Scheme):
    """int8 weights, float activations and I/O: the smallest change to a float model's numerics."""

    name: ClassVar[str] = "int8-weight-only"
    precision: ClassVar[str] = "int8-weight"
    calib_samples: int = 0


@dataclass(frozen=True)
class Mixed(_Scheme):
    """W8A8 post-training quantization with some layers kept in float32: the most sensitive ones,
    found by per-layer sensitivity analysis until the profile's accuracy budget is met
    (:mod:`edgekit.quantize.sensitivity`), or the ones the user names. ``float_layers`` empty
    means "choose them"; the manifest records the layers chosen."""

    name: ClassVar[str] = "mixed"
    precision: ClassVar[str] = "int8"
    per_channel: bool = True
    calib_samples: int = 128
    float_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # a dict round trip gives a list
        object.__setattr__(self, "float_layers", tuple(self.float_layers))


@dataclass(frozen=True)
class LMWeights(_Scheme):
    """A language model's weights (:mod:`edgekit.lm.quantize`, each backend's own tool): the linear layers at
    ``bits`` (4: symmetric per group of ``group_size`` inputs; 8: per channel, or per block of 32 in ONNX
    Runtime), the embedding table and the output layer int8 (as production LLM recipes ship them) or float.
    ``accuracy_level``: ONNX Runtime's MatMulNBits compute (0 float, 4 int8 activations per block: faster, and
    known to flip greedy tokens on some models). ``hqq``: ExecuTorch's int4 scales by half-quadratic
    optimisation instead of min/max. ``asymmetric``: int4 linear layers per block from their minimum to their
    maximum (llama.cpp's Q4_1 grid) instead of symmetric (every format). ``smoothquant``:
    ExecuTorch int8's SmoothQuant migration strength alpha (0: off)."""

    name: ClassVar[str] = "lm-weights"
    bits: int = 4
    group_size: int = 32
    embedding: str = "int8"
    output: str = "int8"
    accuracy_level: int = 4
    hqq: bool = False
    asymmetric: bool = False
    smoothquant: float = 0.0
    calib_samples: int = 0

    @property
    def precision(self) -> str:
        return f"int{self.bits}-weight"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, not {self.bits}")
        if self.embedding not in ("int8", "float") or self.output not in ("int8", "float"):
            raise ValueError("embedding and output are 'int8' or 'float'")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level is 0..4, not {self.accuracy_level}")
        if not 0 <= self.smoothquant <= 1:
            raise ValueError(f"smoothquant (alpha) is in [0, 1], not {self.smoothquant}")


Scheme = Int8Static | Int8QAT | Int8Dynamic | FP16 | Int4WeightOnly | Int8WeightOnly | Mixed | LMWeights
SCHEMES: dict[str, type] = {"int8": Int8Static, "int8-qat": Int8QAT, "int8-dynamic": Int8Dynamic, "fp16": FP16,
                            "int4-weight-only": Int4WeightOnly, "int8-weight-only": Int8WeightOnly, "mixed": Mixed}
LM_SCHEMES: dict[str, type] = {LMWeights.name: LMWeights}  # built by the planner for language models only


def scheme_from_dict(data: dict[str, Any]) -> Scheme:
    data = dict(data)
    name = data.pop("scheme")
    known = {**SCHEMES, **LM_SCHEMES}
    if name not in known:
        raise ValueError(f"unknown quantization scheme {name!r}; known: {', '.join(known)}")
    return known[name](**data)
