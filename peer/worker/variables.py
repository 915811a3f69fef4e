"""Expand ``{name}`` variables in command parameters on the worker.

Flamenco expands variables on the Manager for each worker's platform. A peer
farm has no central config, and each workstation knows best where its own
Blender is, so the worker expands them itself: ``{blender}`` is this
worker's Blender executable and ``{blenderArgs}`` its default arguments
(Flamenco's default: ``-b -y``). Unknown ``{placeholders}`` are left as they are,
as in Flamenco. Only top-level strings and strings inside top-level lists are
expanded; keys and nested objects are untouched (Flamenco does the same).
"""

from __future__ import annotations

import re
from typing import Any

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_string(text: str, variables: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def expand_parameters(params: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, str):
            out[key] = expand_string(value, variables)
        elif isinstance(value, list):
            out[key] = [expand_string(v, variables) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out
