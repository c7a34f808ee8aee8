"""The versioned dataset schema, shipped as package data.

``dataset-v3.schema.json`` is the JSON Schema for a dataset's metadata (the root group's
attributes); ``dataset-v3.md`` is the human-readable spec of arrays, axes and invariants.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def load_json(name: str) -> dict:
    """Load a schema file shipped in this package, e.g. ``load_json("dataset-v3.schema.json")``."""
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))
