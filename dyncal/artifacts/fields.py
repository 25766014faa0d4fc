"""Dataclasses whose JSON document is their fields."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

__all__ = ["JsonFields"]


class JsonFields:
    """Mixin for a dataclass whose JSON-ready dict is its fields, in order, with tuples as lists.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Span(JsonFields):
        ...     name: str
        ...     bounds: tuple[float, float]
        >>> Span("ci", (0.5, 1.5)).to_dict()
        {'name': 'ci', 'bounds': [0.5, 1.5]}
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every field by name, tuples as lists."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(cast(Any, self))}
        return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}
