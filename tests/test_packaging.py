"""The installed distribution: one top-level name (`omgmg`) and every module of the source tree.

The repository's folders datakit/, collectors/, cli/ and schemas/ install as omgmg.datakit,
omgmg.collectors, omgmg.cli and omgmg.schemas (pyproject's package-dir), so `pip install omgmg` adds
nothing to site-packages but `omgmg`, and cannot clash with the PyPI distributions named
`collectors`, `schemas` or `cli`. A checkout imports the same names (omgmg/__init__.py), so the tests
would import a module the wheel forgot; the wheel's file list is compared with the tree instead
(skipped for editable installs, whose file list points back at the tree).
"""

from __future__ import annotations

import json
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from conftest import PACKAGE_FOLDERS

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_AS = {folder: package.replace(".", "/") for folder, package in PACKAGE_FOLDERS.items()}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_declared_under_the_one_omgmg_name():
    cfg = _setuptools()
    declared = set(cfg["packages"])
    assert all(p == "omgmg" or p.startswith("omgmg.") for p in declared)
    assert cfg["package-dir"] == {f"omgmg.{top}": top for top in ("datakit", "collectors", "cli", "schemas")}
    in_tree = set()
    for top, installed in INSTALLED_AS.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            in_tree.add(".".join((installed.replace("/", "."), *rel)))
    assert in_tree == declared, f"package folders not declared: {in_tree - declared}; stale: {declared - in_tree}"


def test_every_source_file_is_in_the_installed_distribution_and_nothing_else_at_top_level():
    # the installed distribution, not the omgmg.egg-info an in-tree build leaves in the checkout (which
    # `python -m pytest` has on sys.path first, and which lists the source tree's paths)
    site = sysconfig.get_paths()["purelib"]
    found = [d for d in metadata.distributions(path=[site]) if d.metadata["Name"] == "omgmg"]
    if not found:
        pytest.skip(f"omgmg is not installed in {site}")
    dist = found[0]
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        pytest.skip("editable install: the distribution is the source tree itself")
    installed = {str(f).replace("\\", "/") for f in dist.files or []}
    top_level = {f.split("/")[0] for f in installed if not f.startswith("..") and ".dist-info" not in f}
    assert top_level == {"omgmg"}, f"installed beside omgmg: {sorted(top_level - {'omgmg'})}"
    wanted = {
        f"{INSTALLED_AS[top]}/{p.relative_to(ROOT / top).as_posix()}"
        for top in INSTALLED_AS
        for p in (ROOT / top).rglob("*")
        if p.suffix in (".py", ".json", ".md", ".toml") and "__pycache__" not in p.parts
    }
    missing = sorted(wanted - installed)
    assert not missing, f"not installed by `pip install .`: {missing}"
