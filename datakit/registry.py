"""Public datasets by name: ``omgmg-data list --remote`` shows them, ``omgmg-data get NAME`` fetches one,
imports it and checks it against what its publisher says.

The registry is a data file in the package (``known_datasets.json``, versioned with omgmg, its sources
named in it); ``OMGMG_REGISTRY=FILE`` reads another of the same form (a lab's mirror, or the tests'). Each
entry says where the data is (a pinned or pinnable location), which vault dataset (uid) and level it is,
what it was recorded on, whether omgmg can evaluate a policy on it live, and the publisher's statistics.

The statistics are checked on the source itself, before anything is written, the way the publisher
computed them: OG-MARL's ``analyse_vault`` counts the vault's rows as transitions, the rows where every
agent's done flag is set as trajectories (its cards use the terminal flags, or terminals and truncations
together: either reading is accepted, and which one matched is recorded), and sums agent 0's rewards
between those rows into returns (:func:`omgmg.datakit.ogmarl.check_published`). A copy that does not
match (a truncated download, a different revision, someone else's data under the name) fails loudly and
writes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from omgmg.datakit.errors import ConfigError, RequestError


@dataclass(frozen=True)
class KnownDataset:
    name: str
    location: str
    uid: str
    og_marl_task: str
    level: str
    recorded_on: str
    evaluable: str
    generation: str
    expected: dict


def registry_file() -> Path | resources.abc.Traversable:
    given = os.environ.get("OMGMG_REGISTRY")
    return Path(given) if given else resources.files("omgmg.datakit") / "known_datasets.json"


def known_datasets() -> dict[str, KnownDataset]:
    """Every entry of the registry, by name."""
    source = registry_file()
    try:
        data = json.loads(source.read_text())
        return {name: KnownDataset(name=name, **entry) for name, entry in data["datasets"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"the dataset registry {source} cannot be read ({type(e).__name__}: {e})") from None


def sources() -> dict[str, str]:
    return json.loads(registry_file().read_text()).get("sources", {})


def lookup(name: str) -> KnownDataset:
    known = known_datasets()
    if name not in known:
        close = [n for n in known if name.lower() in n.lower()]
        hint = f" (did you mean {', '.join(close[:4])}?)" if close else " (omgmg-data list --remote lists them)"
        raise RequestError(f"no known dataset {name!r}{hint}")
    return known[name]


def get(name: str, out, *, overwrite: bool = False, progress=None):
    """Fetch the known dataset ``name``, check it against its publisher's statistics and import it at ``out``."""
    from omgmg.datakit.ogmarl import import_vault

    entry = lookup(name)
    return import_vault(
        entry.location, out, uid=entry.uid, task=entry.og_marl_task, level=entry.level, overwrite=overwrite,
        progress=progress, expected=entry.expected,
    )  # fmt: skip
