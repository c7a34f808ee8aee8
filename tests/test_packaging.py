"""The installed distribution contains every module of the source tree.

`python -m pytest` puts the repository on sys.path, so the tests would import a module the wheel
forgot; this test compares the wheel's file list with the tree instead (skipped for editable installs,
whose file list points back at the tree).
"""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datakit", "collectors", "omgmg", "cli", "schemas")


def test_every_source_file_is_in_the_installed_distribution():
    dist = metadata.distribution("omgmg")
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        pytest.skip("editable install: the distribution is the source tree itself")
    installed = {str(f).replace("\\", "/") for f in dist.files or []}
    wanted = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
              if p.suffix in (".py", ".json", ".md", ".toml") and "__pycache__" not in p.parts}
    missing = sorted(wanted - installed)
    assert not missing, f"not installed by `pip install .`: {missing}"
