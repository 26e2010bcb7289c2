"""Typed contract of the Python-level packet decoder (engine/_decode.pyx)."""
from typing import Any
from typing_extensions import disjoint_base

REASONS: tuple[str, ...]

@disjoint_base
class Decoder:
    def __init__(self) -> None: ...
    def decode(self, frame: bytes, linktype: int = ..., ts_us: int = ...) -> dict[str, Any]: ...
    @property
    def fragments(self) -> int: ...

def decode(frame: bytes, linktype: int = ..., ts_us: int = ...) -> dict[str, Any]: ...
