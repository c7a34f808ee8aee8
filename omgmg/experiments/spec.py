"""Experiment specs: a small TOML file naming datasets x algorithms x seeds (x one hyperparameter
grid), validated, and expanded into cells, each keyed by a hash of its resolved configuration.

The schema (docs/experiments.md has it with examples; ``omgmg/experiments/specs/`` ships the paper's):

    name = "table1"                       # required
    title = "Table 1: ..."                # shown on reports
    layout = "table"                      # "table" (algorithms as columns), "ablation" (needs [grid]) or
                                          # "selection" (an ablation of one algorithm's knob, reported with
                                          # the pick of docs/omgmg.md's selection rule)
    algorithms = ["omiga", "omgmg"]       # required, names from ``omgmg train --algo``
    seeds = [0, 1, 2, 3, 4]               # required

    [budget]                              # required: the offline training loop
    steps = 1000000
    eval_every = 50000
    eval_episodes = 32

    [data]                                # optional: how missing datasets are generated (omgmg-data collect)
    transitions = 1000000                 # MaMuJoCo tasks; SMACv2 tasks use `episodes`
    episodes = 1000
    train_steps = 2000000                 # behaviour-policy training budget (default: the collector's)
    seed = 0

    [[datasets]]                          # required, one or more
    suite = "mamujoco"
    task = "Hopper-3x1"
    levels = ["expert", "medium"]
    steps = 50000                         # optional: steps / eval_every / eval_episodes for these datasets
    obs_mode = "omiga"                    # optional (MaMuJoCo): OMIGA's observation layout (default local)
    rollout_seed = 1                      # optional: an independent copy of these levels (no shared episode)
    # or: path = "/data/hopper-medium.zarr" (an existing dataset; label = "hopper-medium" optional)
    # or: known = ["og-marl/omiga/hopper-medium"] (public datasets by name: `omgmg-data list --remote`)

    published = "comadice-mamujoco"       # optional: a published table to report beside ours
                                          # (omgmg/experiments/published/NAME.json)

    [grid]                                # optional: one hyperparameter, a list of values
    lam = [0.0, 0.5, 1.0]

    [overrides.omgmg]                     # optional: fixed hyperparameters per algorithm
    nu = 1.0

    [smoke]                               # required: replaces seeds / budget / data under --smoke
    seeds = [0]
    steps = 200
    eval_every = 200
    eval_episodes = 2
    transitions = 2000
    episodes = 20
    train_steps = 20000
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from omgmg.datakit.errors import ConfigError, DatasetError, RequestError
from omgmg.datakit.format import normalise_level

SPEC_DIR = Path(__file__).parent / "specs"
LAYOUTS = ("table", "ablation", "selection")
BUDGET_KEYS = ("steps", "eval_every", "eval_episodes")
DATA_KEYS = ("transitions", "episodes", "train_steps", "seed")
TOP_KEYS = {
    "name",
    "title",
    "layout",
    "algorithms",
    "seeds",
    "budget",
    "data",
    "datasets",
    "grid",
    "overrides",
    "smoke",
    "description",
    "published",
}


class SpecError(ConfigError):
    """A spec that cannot be run; the message names the key and the fix."""


@dataclass(frozen=True)
class DatasetRef:
    """A dataset a cell trains on: an existing path, or suite/task/level to generate with the collectors
    (``obs_mode``: MaMuJoCo's observation layout, local or omiga; ``rollout_seed``: an independent copy of
    the level, :class:`omgmg.collectors.collect.CollectRequest`)."""

    suite: str | None = None
    task: str | None = None
    level: str | None = None
    path: str | None = None
    label: str | None = None
    obs_mode: str | None = None
    rollout_seed: int | None = None
    known: str | None = None
    """A public dataset by its registry name (:mod:`omgmg.datakit.registry`), fetched where it is missing."""

    VARIANT_KEYS = ("obs_mode", "rollout_seed")  # added later: left out of a cell's key where unset
    OPTIONAL_KEYS = (*VARIANT_KEYS, "known")

    @property
    def evaluable(self) -> bool:
        """Whether a policy trained on it is evaluated live: always, but for a known dataset its registry says."""
        if self.known is None:
            return True
        from omgmg.datakit.registry import lookup

        return lookup(self.known).evaluable.startswith("yes")

    @property
    def variant(self) -> str:
        """How the dataset differs from the task's default data: '' or e.g. '-omiga-rollouts1'."""
        tag = f"-{self.obs_mode}" if self.obs_mode not in (None, "local") else ""
        return tag + ("" if self.rollout_seed is None else f"-rollouts{self.rollout_seed}")

    @property
    def name(self) -> str:
        if self.path:
            return self.label or Path(self.path).stem
        if self.known:
            return self.known
        return f"{self.task}{self.variant}/{self.level}"

    @property
    def row(self) -> tuple[str, str]:
        """(task, level) for reports (a known dataset: its name less the level, e.g. og-marl/omiga/hopper)."""
        if self.path:
            return (self.label or Path(self.path).stem, "-")
        if self.known:
            return (self.known.removesuffix(f"-{self.level}"), self.level)
        return (self.task + self.variant, self.level)

    def to_json(self) -> dict:
        """The fields, without the optional keys where unset (the keys of cells made before them stay)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in self.OPTIONAL_KEYS or v is not None}


@dataclass(frozen=True)
class Cell:
    """One training run of a sweep."""

    algorithm: str
    dataset: DatasetRef
    seed: int
    grid: tuple[str, float] | None  # (hyperparameter, value) for ablations
    config: dict  # the algorithm's fully resolved config (dataclass fields)
    data: dict  # generation settings of the dataset (for generated ones)

    @property
    def key(self) -> str:
        """Hash of everything that determines the cell's result."""
        payload = {
            "algorithm": self.algorithm,
            "dataset": self.dataset.to_json(),
            "config": self.config,
            "data": self.data if self.dataset.path is None else None,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def dirname(self) -> str:
        grid = f"-{self.grid[0]}{self.grid[1]:g}" if self.grid else ""
        ds = self.dataset.name.replace("/", "-")
        return f"{ds}-{self.algorithm}{grid}-seed{self.seed}-{self.key[:10]}"

    def to_json(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "dataset": self.dataset.to_json(),
            "seed": self.seed,
            "grid": list(self.grid) if self.grid else None,
            "config": self.config,
            "data": self.data,
            "key": self.key,
        }

    @classmethod
    def from_json(cls, d: dict) -> Cell:
        return cls(
            algorithm=d["algorithm"],
            dataset=DatasetRef(**d["dataset"]),
            seed=int(d["seed"]),
            grid=tuple(d["grid"]) if d["grid"] else None,
            config=d["config"],
            data=d["data"],
        )


@dataclass
class ExperimentSpec:
    name: str
    algorithms: list[str]
    seeds: list[int]
    budget: dict
    datasets: list[DatasetRef]
    smoke: dict
    title: str = ""
    layout: str = "table"
    data: dict = field(default_factory=dict)
    grid: tuple[str, list[float]] | None = None
    overrides: dict[str, dict] = field(default_factory=dict)
    source: str = ""
    dataset_budgets: dict[DatasetRef, dict] = field(default_factory=dict)
    """The [budget] keys a [[datasets]] entry sets for its own datasets (the smoke budget ignores them)."""
    published: str | None = None
    """A published table the report puts beside ours (``published/NAME.json``)."""

    def resolved(self, smoke: bool) -> tuple[list[int], dict, dict]:
        """(seeds, budget, data settings) for the full or the smoke budget."""
        if not smoke:
            return self.seeds, self.budget, self.data
        s = self.smoke
        return (
            s["seeds"],
            {k: s[k] for k in BUDGET_KEYS},
            {k: s[k] for k in DATA_KEYS if k in s} | {"seed": self.data.get("seed", 0)},
        )

    def cells(self, smoke: bool = False) -> list[Cell]:
        from omgmg.algos import make_config

        seeds, budget, data = self.resolved(smoke)
        points = [(self.grid[0], v) for v in self.grid[1]] if self.grid else [None]
        out = []
        for ds in self.datasets:
            suite = ds.suite if ds.path is None else _suite_of(ds.path)
            for algo in self.algorithms:
                for point in points:
                    for seed in seeds:
                        fixed = dict(self.overrides.get(algo, {}))
                        if point is not None:
                            fixed[point[0]] = point[1]
                        own = {} if smoke else self.dataset_budgets.get(ds, {})
                        cfg = make_config(algo, suite, **fixed, **(budget | own), seed=seed)
                        out.append(Cell(algo, ds, seed, point, dataclasses.asdict(cfg), dict(data)))
        return out

    def suite_datasets(self) -> dict[str, list[list[str]]]:
        """suite -> the (task, level) rows of its datasets: what a selection's suite score averages over, so
        that its pick waits until every one of them has results."""
        rows: dict[str, list[list[str]]] = {}
        for ds in self.datasets:
            suite = ds.suite if ds.path is None else _suite_of(ds.path)
            if suite is not None and list(ds.row) not in rows.setdefault(suite, []):
                rows[suite].append(list(ds.row))
        return rows

    def knob_defaults(self) -> dict[str, float]:
        """suite -> the value the grid's hyperparameter takes without the grid (the algorithm's per-suite default
        after the spec's overrides): what a selection's winner is held against."""
        from omgmg.algos import make_config

        if not self.grid:
            return {}
        (algo,), knob = self.algorithms, self.grid[0]
        suites = {ds.suite if ds.path is None else _suite_of(ds.path) for ds in self.datasets}
        return {
            suite: float(getattr(make_config(algo, suite, **self.overrides.get(algo, {})), knob))
            for suite in sorted(suites - {None})
        }


def _suite_of(path: str) -> str | None:
    from omgmg.datakit import open_dataset

    return open_dataset(path).spec.suite


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.toml"))


def load_spec(name_or_path: str | Path) -> ExperimentSpec:
    """A spec from a TOML path, or one shipped with omgmg by name (table1, table2, ablation-lambda, ...)."""
    path = Path(name_or_path)
    source = str(path)  # recorded in sweep.json: a shipped spec by its name, not this install's path
    if not path.exists() or path.is_dir():  # a folder is never a spec: e.g. a sweep's output named after it
        shipped = SPEC_DIR / f"{name_or_path}.toml"
        if path.is_dir() and not shipped.exists():
            raise SpecError(f"{path} is a folder; give a TOML spec file or one of: {', '.join(shipped_specs())}")
        if not shipped.exists():
            raise SpecError(f"no spec file {name_or_path!r}; give a TOML path or one of: {', '.join(shipped_specs())}")
        path, source = shipped, str(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not a UTF-8 text file; a spec is TOML text") from None
    except OSError as e:
        raise SpecError(f"{path} cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}") from None
    return parse_spec(raw, source=source)


def parse_spec(raw: dict, source: str = "<spec>") -> ExperimentSpec:
    """Validate a spec's dict; every error names the key and what is allowed."""
    from omgmg.algos import ALGORITHMS, algorithm_class

    def need(cond: bool, message: str) -> None:
        if not cond:
            raise SpecError(f"{source}: {message}")

    unknown = sorted(set(raw) - TOP_KEYS)
    need(not unknown, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "algorithms", "seeds", "budget", "datasets", "smoke"):
        need(key in raw, f"missing required key {key!r}")
    need(isinstance(raw["name"], str) and raw["name"], "name must be a non-empty string")
    layout = raw.get("layout", "table")
    need(layout in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    algos = raw["algorithms"]
    need(isinstance(algos, list) and algos, "algorithms must be a non-empty list")
    bad = [a for a in algos if a not in ALGORITHMS]
    need(not bad, f"unknown algorithm(s) {', '.join(map(str, bad))}; choose from {', '.join(ALGORITHMS)}")
    seeds = raw["seeds"]
    need(
        isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds), "seeds must be a list of integers"
    )

    budget = raw["budget"]
    need(
        isinstance(budget, dict) and set(budget) == set(BUDGET_KEYS),
        f"[budget] must set exactly {', '.join(BUDGET_KEYS)}",
    )
    data = raw.get("data", {})
    need(isinstance(data, dict) and not set(data) - set(DATA_KEYS), f"[data] may set only {', '.join(DATA_KEYS)}")
    smoke = raw["smoke"]
    need(
        isinstance(smoke, dict)
        and {"seeds", *BUDGET_KEYS} <= set(smoke)
        and not set(smoke) - {"seeds", *BUDGET_KEYS, *DATA_KEYS},
        f"[smoke] must set seeds, {', '.join(BUDGET_KEYS)} and may set {', '.join(DATA_KEYS)}",
    )
    for where, table in (("budget", budget), ("data", data), ("smoke", smoke)):
        for k, v in table.items():
            if k == "seeds":
                need(
                    isinstance(v, list) and v and all(isinstance(s, int) for s in v),
                    "[smoke] seeds must be a list of integers",
                )
            else:
                need(isinstance(v, int) and v >= (0 if k == "seed" else 1), f"[{where}] {k} must be a positive integer")

    datasets, dataset_budgets = [], {}
    need(isinstance(raw["datasets"], list) and raw["datasets"], "[[datasets]] needs at least one entry")
    for i, d in enumerate(raw["datasets"]):
        where = f"datasets[{i}]"
        own = {k: d[k] for k in BUDGET_KEYS if k in d}
        for k, v in own.items():
            need(isinstance(v, int) and v >= 1, f"{where}: {k} must be a positive integer")
        d = {k: v for k, v in d.items() if k not in BUDGET_KEYS}
        if "known" in d:
            need(set(d) == {"known"}, f"{where}: a known dataset takes only known and {', '.join(BUDGET_KEYS)}")
            names = d["known"] if isinstance(d["known"], list) else [d["known"]]
            for name in names:
                datasets.append(_known_ref(name, f"{source}: {where}"))
                dataset_budgets[datasets[-1]] = own
            continue
        if "path" in d:
            need(
                set(d) <= {"path", "label"},
                f"{where}: a dataset given by path takes only path, label, {', '.join(BUDGET_KEYS)}",
            )
            datasets.append(DatasetRef(path=str(d["path"]), label=d.get("label")))
            dataset_budgets[datasets[-1]] = own
            continue
        variant = {k: d[k] for k in DatasetRef.VARIANT_KEYS if k in d}
        d = {k: v for k, v in d.items() if k not in DatasetRef.VARIANT_KEYS}
        need(
            set(d) == {"suite", "task", "levels"},
            f"{where}: give either path, or suite, task and levels (and optionally {', '.join(BUDGET_KEYS)}, "
            f"{', '.join(DatasetRef.VARIANT_KEYS)})",
        )
        need(d["suite"] in ("mamujoco", "smacv2"), f"{where}: suite must be mamujoco or smacv2, got {d['suite']!r}")
        need(
            variant.get("obs_mode", "local") in ("local", "omiga")
            and (d["suite"] == "mamujoco" or "obs_mode" not in variant),
            f"{where}: obs_mode is local or omiga, for MaMuJoCo tasks",
        )
        need(
            isinstance(variant.get("rollout_seed", 0), int) and variant.get("rollout_seed", 0) >= 0,
            f"{where}: rollout_seed must be a non-negative integer",
        )
        need(isinstance(d["levels"], list) and d["levels"], f"{where}: levels must be a non-empty list")
        for level in d["levels"]:
            try:
                level = normalise_level(level)
            except DatasetError as e:  # its message lists the levels
                raise SpecError(f"{source}: {where}: {e}") from None
            need(
                level != "medium-replay" or "rollout_seed" not in variant,
                f"{where}: medium-replay (the behaviour run's training episodes) has no copy with another rollout_seed",
            )
            datasets.append(DatasetRef(suite=d["suite"], task=str(d["task"]), level=level, **variant))
            dataset_budgets[datasets[-1]] = own

    grid = None
    if "grid" in raw:
        need(isinstance(raw["grid"], dict) and len(raw["grid"]) == 1, "[grid] must name exactly one hyperparameter")
        ((param, values),) = raw["grid"].items()
        need(
            isinstance(values, list) and values and all(isinstance(v, int | float) for v in values),
            f"[grid] {param} must be a non-empty list of numbers",
        )
        grid = (param, list(values))
    need(layout == "table" or grid is not None, f"layout {layout!r} needs a [grid]")
    need(layout != "selection" or len(algos) == 1, "layout 'selection' picks one algorithm's knob: list one algorithm")

    overrides = raw.get("overrides", {})
    need(isinstance(overrides, dict), "[overrides] must be a table of tables, e.g. [overrides.omgmg]")
    for algo in overrides:
        need(algo in algos, f"[overrides.{algo}]: {algo} is not among the spec's algorithms")
    for algo in algos:  # every grid / override key must be a field of the algorithm's config, valid in range
        fields = {f.name for f in dataclasses.fields(algorithm_class(algo).config_cls)}
        keys = set(overrides.get(algo, {})) | ({grid[0]} if grid else set())
        foreign = sorted(keys - fields)
        need(not foreign, f"{', '.join(foreign)} is not a hyperparameter of {algo}; see `omgmg train --help`")
        for value in grid[1] if grid else [None]:
            values = dict(overrides.get(algo, {})) | ({grid[0]: value} if grid else {})
            try:
                algorithm_class(algo).config_cls(**values)
            except (TypeError, ValueError) as e:
                raise SpecError(f"{source}: {algo}: {e}") from None
    published = raw.get("published")
    if published is not None:
        need(isinstance(published, str), "published must name a table of omgmg/experiments/published/")
        load_published(published)  # exists and reads
    return ExperimentSpec(
        published=published,
        name=raw["name"],
        algorithms=list(algos),
        seeds=list(seeds),
        budget=dict(budget),
        datasets=datasets,
        smoke=dict(smoke),
        title=raw.get("title", raw["name"]),
        layout=layout,
        data=dict(data),
        grid=grid,
        overrides={k: dict(v) for k, v in overrides.items()},
        source=source,
        dataset_budgets={ref: own for ref, own in dataset_budgets.items() if own},
    )


PUBLISHED_DIR = Path(__file__).parent / "published"


def _known_ref(name, where: str) -> DatasetRef:
    """The DatasetRef of a public dataset by its registry name (its suite and level from the registry)."""
    from omgmg.datakit.ogmarl import vault_task
    from omgmg.datakit.registry import lookup

    try:
        entry = lookup(str(name))
    except (ConfigError, DatasetError, RequestError) as e:
        raise SpecError(f"{where}: {e}") from None
    task = vault_task(*entry.og_marl_task.split("/"))
    return DatasetRef(suite=task.suite, task=task.task, level=entry.level, known=entry.name)


def load_published(name: str) -> dict:
    """A published table (``published/NAME.json``): its citation, protocol, and {"TASK|LEVEL": {algo: [mean,
    std]}} keyed by the report's rows."""
    path = PUBLISHED_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        shipped = ", ".join(sorted(p.stem for p in PUBLISHED_DIR.glob("*.json")))
        raise SpecError(f"no published table {name!r} ({type(e).__name__}); shipped: {shipped}") from None
