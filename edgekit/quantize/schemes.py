"""Quantization schemes: small frozen configs with a dict round trip.

A scheme says *what* to do; each exporter applies it with its backend's own
quantizer (PT2E XNNPACK / litert-torch, ONNX Runtime's quantize_static).

>>> scheme_from_dict(Int8Static(calib_samples=64).to_dict())
Int8Static(per_channel=True, calib_samples=64)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Int8Static:
    """W8A8 post-training quantization: int8 symmetric weights (per-channel by default),
    8-bit activations with ranges from the calibration split."""

    name: ClassVar[str] = "int8"
    precision: ClassVar[str] = "int8"
    per_channel: bool = True
    calib_samples: int = 128

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.name, **asdict(self)}


SCHEMES: dict[str, type] = {"int8": Int8Static}


def scheme_from_dict(data: dict[str, Any]) -> Int8Static:
    data = dict(data)
    name = data.pop("scheme")
    if name not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name](**data)
