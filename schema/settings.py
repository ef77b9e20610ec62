"""Settings dataclasses travel between stages as JSON (a component's custom_config); this reads
one back. Nothing here imports anything but the standard library, so every layer may use it."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Type, TypeVar

T = TypeVar("T")


def settings_from_dict(cls: Type[T], d: Dict[str, Any], what: str, **converted: Any) -> T:
    """`cls(**d)`, where JSON's lists become tuples again, a missing key takes the dataclass
    default and an unknown key is an error naming `what`. `converted`: fields the caller has
    already turned into their types (they replace the raw values)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    values.update(converted)
    return cls(**values)
