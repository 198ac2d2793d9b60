"""JSON from outside (a bundle's manifest, a device's report), read with bounds. Stdlib only.

Python's ``json`` accepts NaN and Infinity (not JSON: other parsers refuse them), recurses until it
hits Python's recursion limit on deeply nested input, and builds containers of any size. :func:`loads`
refuses all three, and :func:`check` applies the same limits to an already decoded value, so that the
code reading the value after it can print, store and walk it without surprises.

>>> loads(b'{"a": [1, 2.5, "x"]}', "report")
{'a': [1, 2.5, 'x']}
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32
MAX_STR = 1 << 16
MAX_ITEMS = 100_000
MAX_INT = (1 << 63) - 1  # int64: what SQLite, numpy and most JSON readers can hold


class JsonError(ValueError):
    """Not standard JSON, or beyond the limits; the message is one line naming what was read."""


def loads(raw: bytes | str, what: str) -> Any:
    """Decode standard JSON (UTF-8), then :func:`check` it."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"non-standard JSON value {name}")

    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise JsonError(f"{what} is nested too deeply (over {MAX_DEPTH} levels)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise JsonError(f"{what} is not valid JSON: {str(e).splitlines()[0][:200]}") from None
    check(value, what)
    return value


def check(value: Any, what: str) -> None:
    """Refuse nesting over :data:`MAX_DEPTH`, strings over :data:`MAX_STR` characters, containers over
    :data:`MAX_ITEMS` items, integers beyond int64, NaN or infinite numbers, and types JSON does not have."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise JsonError(f"{what} is nested too deeply (over {MAX_DEPTH} levels)")
        if isinstance(item, str):
            if len(item) > MAX_STR:
                raise JsonError(f"{what} holds a string of {len(item)} characters (limit {MAX_STR})")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JsonError(f"{what} holds a non-finite number ({item}); JSON has no NaN or Infinity")
        elif isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > MAX_INT:
                raise JsonError(f"{what} holds an integer of {len(str(abs(item)))} digits, beyond int64")
        elif isinstance(item, (dict, list)):
            if len(item) > MAX_ITEMS:
                raise JsonError(f"{what} holds a container of {len(item)} items (limit {MAX_ITEMS})")
            if isinstance(item, dict):
                if not all(isinstance(k, str) for k in item):
                    raise JsonError(f"{what} has an object key that is not a string")
                stack.extend((k, depth + 1) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif not (item is None or isinstance(item, (bool, int))):
            raise JsonError(f"{what} holds a {type(item).__name__}, which JSON does not have")


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (null), for writing standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
