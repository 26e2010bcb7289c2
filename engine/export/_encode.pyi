"""Typed contract of the per-flow C encoders (engine/export/_encode.pyx)."""
from typing import Any, Sequence

import numpy as np
from typing_extensions import disjoint_base

KINDS: dict[str, int]

@disjoint_base
class Encoder:
    def __init__(self, fields: Sequence[Any], dtype: np.dtype, keys: Sequence[int | str],
                 json_keys: Sequence[str]) -> None: ...
    def tlv(self, records: np.ndarray, suffix: bytes = ...) -> list[bytes]: ...
    def json(self, records: np.ndarray, suffix: bytes = ...) -> list[bytes]: ...

def decode_tlv(buf: bytes) -> list[dict[int | str, Any]]: ...
