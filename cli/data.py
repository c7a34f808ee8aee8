"""``omgmg-data``: make, check, look at, import and export offline MARL datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape

from omgmg.cli.common import (
    DATASET,
    EXIT_INVALID,
    console,
    err_console,
    fail,
    friendly_errors,
    progress_bar,
    progress_bars,
    version_option,
    warn,
)
from omgmg.cli.options import config_options, given, request_options
from omgmg.collectors.behaviour import ALGORITHMS as BEHAVIOUR_ALGORITHMS
from omgmg.collectors.collect import BEHAVIOUR_FIXED, CollectRequest
from omgmg.collectors.fixtures import SHAPES as FIXTURE_SHAPES
from omgmg.datakit.format import LEVEL_NAMES
from omgmg.datakit.rows import ROW_CONVENTIONS
from omgmg.datakit.spec import EPISODE_LIMITS

BEHAVIOUR_CONFIGS = {name: cfg for name, (cfg, _) in BEHAVIOUR_ALGORITHMS.items()}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
def main():
    """Offline MARL datasets: format 3 (Zarr v3; formats 1 and 2 are read). See schemas/dataset-v3.md for the format."""


@main.command()
@click.argument("path", type=DATASET)
@friendly_errors
def validate(path: Path):
    """Check every invariant of the format over every value of the dataset at PATH.

    Exit 0 when valid; exit 1 with one line per problem (array, index, fix) when not.
    """
    from omgmg.datakit import validate as run_validate

    problems = run_validate(path)
    if problems:
        err_console.print(f"[bold red]invalid:[/] {path} ({len(problems)} problem(s))", highlight=False)
        for p in problems:
            err_console.print(f"  {p}", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_INVALID)
    console.print(f"[bold green]valid:[/] {path}", highlight=False)
    from omgmg.datakit import open_dataset

    if open_dataset(path).format_version < 2:
        console.print(
            "note: format 1 stores carry no chunk checksums, so bytes altered inside a chunk cannot be "
            f"found; `omgmg-data upgrade {path} --out NEW` rewrites it as format 2",
            highlight=False,
        )


@main.command()
@click.argument("a", type=DATASET)
@click.argument("b", type=DATASET)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    help="Also write both return distributions side by side to this PNG file.",
)
@friendly_errors
def compare(a: Path, b: Path, plot: Path | None):
    """Compare two datasets: shared episodes (by content hash), return distributions side by side (PNG),
    coverage; warns when two levels of one task are identical or nearly so."""
    from rich.table import Table

    from omgmg.datakit import open_dataset
    from omgmg.datakit.coverage import compare as run_compare
    from omgmg.datakit.coverage import plot_comparison

    da, db = open_dataset(a), open_dataset(b)
    with progress_bar("hashing episodes", None):
        c = run_compare(da, db)
    t = Table(show_edge=False)
    for col in ("", str(a), str(b)):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("task / level", f"{da.spec.name} / {da.level}", f"{db.spec.name} / {db.level}")
    t.add_row("episodes", str(c.episodes[0]), str(c.episodes[1]))
    shared = [round(x * n) for x, n in zip(c.shared_share, c.episodes, strict=True)]  # counts: nothing rounded away
    t.add_row("also in the other", *(f"{k} of {n}" for k, n in zip(shared, c.episodes, strict=True)))
    t.add_row(
        "return mean ± std",
        f"{c.returns[0].mean():.4g} ± {c.returns[0].std():.3g}",
        f"{c.returns[1].mean():.4g} ± {c.returns[1].std():.3g}",
    )
    t.add_row("joint SACo / OACo", *(f"{x['joint_saco']:.3f} / {x['oaco']:.3f}" for x in c.coverage))
    console.print(t)
    console.print(f"KS distance of the return distributions: {c.ks:.3f}", highlight=False)
    for note in c.notes:
        console.print(f"note: {note}", highlight=False)
    for w in c.warnings:
        warn(w)
    if plot is None:
        console.print("(--plot FILE.png draws the two return distributions side by side)", highlight=False)
        return
    if plot.suffix.lower() != ".png":
        fail(f"--plot writes PNG; give a file name ending in .png, not {plot.name}")
    plot_comparison(c, plot)
    console.print(f"plot: {plot}", highlight=False)


@main.command()
@click.argument("path", type=DATASET)
@click.option(
    "--episodes",
    default="10",
    show_default=True,
    callback=lambda ctx, param, value: _episode_count(value),
    help="Seeded episodes to replay, spread evenly over the dataset: a number, or all (0 also means all).",
)
@click.option(
    "--atol",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0, max=float("inf")),
    callback=lambda ctx, param, value: _finite(value, "--atol"),
    help="Tolerance per value (0: exact, as MaMuJoCo and SMAX replay on the recorded versions).",
)
@friendly_errors
def verify(path: Path, episodes: int | None, atol: float):
    """Re-simulate stored episodes: rebuild the environment from the metadata, reset each chosen episode
    from its recorded seed, drive it with its stored actions and compare every step (rewards, end flags,
    observations, states, action masks). One line per mismatch; exit 1 on any."""
    from omgmg.collectors.verify import verify as run_verify

    with progress_bar("replaying episodes", None) as update:
        report = run_verify(path, episodes, atol=atol, progress=update)
    for line in report.version_warnings:
        warn(f"installed versions differ from the recorded ones: {line}")
    for m in report.mismatches:
        err_console.print(f"[bold red]mismatch:[/] {escape(str(m))}", highlight=False, soft_wrap=True)
    n, seeded = len(report.episodes), report.seeded
    tolerance = "exactly" if atol == 0 else f"within {atol:g}"
    skipped = f"; {report.unseeded} episodes have no recorded seed" if report.unseeded else ""
    which = (
        f"all {n} seeded episodes" if n == seeded else f"{n} of {seeded} seeded episodes (--episodes all: every one)"
    )
    if report.ok:
        console.print(
            f"[bold green]verified[/] {path}: {which} replayed, every step matches {tolerance}{skipped}",
            highlight=False,
        )
        return
    bad = len({m.episode for m in report.mismatches})
    fail(f"{path}: {bad} of {n} replayed episodes differ from the data{skipped}", EXIT_INVALID)


def _episode_count(text: str) -> int | None:
    """--episodes of verify: a count, or all (None)."""
    if str(text).strip().lower() in ("all", "0"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise click.BadParameter(f"{text!r}: give a number of episodes, or all", param_hint="--episodes")
    return n


def _finite(value: float, flag: str) -> float:
    if value != value:  # NaN passes every range check
        raise click.BadParameter(f"{flag} must be a number, not nan", param_hint=flag)
    return value


@main.command()
@click.argument("path", type=DATASET)
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON instead of a table.")
@click.option("--plot", type=click.Path(path_type=Path), help="Also write a return histogram to this PNG file.")
@friendly_errors
def inspect(path: Path, as_json: bool, plot: Path | None):
    """Show the dataset card: where the data came from, its arrays and return statistics."""
    from omgmg.datakit import open_dataset
    from omgmg.datakit.card import bound_share_line, card, plot_returns, render

    ds = open_dataset(path)
    c = card(ds)
    _, bound_warning = bound_share_line(c["bound_share"])
    if plot is not None:
        if plot.suffix.lower() != ".png":
            fail(f"--plot writes PNG; give a file name ending in .png, not {plot.name}")
        plot_returns(ds, plot)
    if as_json:
        click.echo(json.dumps(c, indent=2))
    else:
        console.print(render(c))
        if plot is not None:
            console.print(f"return histogram written to {plot}", highlight=False)
    if bound_warning and not as_json:  # the JSON holds the shares itself
        warn(bound_warning)


@main.command(context_settings={"max_content_width": 110})
@click.argument("suite")
@click.argument("task")
@request_options(
    CollectRequest,
    skip=("suite", "task", "behaviour"),
    required=("level",),
    helps={"level": f"{LEVEL_NAMES} (m-expert, m-replay accepted); docs/collecting.md says what each holds."},
)
@config_options(BEHAVIOUR_CONFIGS, prefix="behaviour.", skip=BEHAVIOUR_FIXED)
@friendly_errors
def collect(suite: str, task: str, **options):
    """Generate a dataset: train (or reuse) a behaviour policy and roll it out at a level.

    Every option is a field of CollectRequest; --behaviour.NAME sets a field of the behaviour
    algorithm's config (MAPPOConfig for discrete actions, HAPPOConfig for continuous).

    Example: omgmg-data collect smacv2 protoss_5v5 --level medium
    """
    from omgmg.collectors.collect import collect as run_collect

    behaviour = given(options, "behaviour.")
    request = {k: v for k, v in options.items() if not k.startswith("behaviour__")}
    # a bad request is a usage error (exit 2) raised before anything is touched
    req = CollectRequest(suite, task, behaviour=behaviour, **request)
    with progress_bars() as bars:
        train_bar = bars.later("training behaviour policy")  # one bar per phase, however often it is updated
        rollout_bar = bars.later(f"collecting {req.level}")

        def on_train(steps, total, score):
            train_bar(steps, total, info=None if score is None else f"eval score {score:.3g}")

        ds = run_collect(req, on_note=bars.note, on_train=on_train, on_rollout=rollout_bar)
    from omgmg.collectors.home import folder_bytes, run_summary
    from omgmg.datakit.outputs import data_home, from_home_relative, human_bytes

    c = ds.meta["stats"]
    line = (
        f"[bold green]wrote[/] {ds.path} ({human_bytes(folder_bytes(ds.path))}): {c['episodes']} episodes, "
        f"{c['transitions']} transitions, return {c['return']['mean']:.4g} ± {c['return']['std']:.3g}"
    )
    if c["win_rate"] is not None:
        line += f", win rate {100 * c['win_rate']:.1f}%"
    console.print(line, highlight=False)
    run = ds.meta["collection"].get("behaviour_run")
    if run:  # where the behaviour run went, and how much of the disk it keeps
        root = from_home_relative(run)
        _, replay = run_summary(root)
        console.print(
            f"behaviour run: {root} ({human_bytes(folder_bytes(root))}, of it {human_bytes(replay)} the training "
            f"episodes medium-replay is collected from); `omgmg-data home` lists what {data_home()} holds and "
            "prunes it",
            highlight=False,
        )


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--shape",
    default="continuous",
    show_default=True,
    type=click.Choice(list(FIXTURE_SHAPES)),
    help="Which fixture: small continuous/discrete, or shaped like a real task.",
)
@click.option("--episodes", default=20, show_default=True, type=click.IntRange(min=1), help="Episodes to write.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-episode-len", type=click.IntRange(min=1), help="Cut episodes shorter than the task limit.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@friendly_errors
def fixture(out: Path, shape: str, episodes: int, seed: int, max_episode_len: int | None, force: bool):
    """Write a small synthetic dataset (no simulator needed) for tests, demos and benchmarks."""
    from omgmg.collectors.fixtures import make_fixture

    with progress_bar("writing episodes", episodes) as update:
        ds = make_fixture(
            out, shape, episodes=episodes, seed=seed, max_episode_len=max_episode_len, overwrite=force, progress=update
        )
    console.print(
        f"[bold green]wrote[/] {out}: {ds.n_episodes} episodes, {ds.n_transitions} transitions", highlight=False
    )


# ----- import: the options and the report both commands share ------------------------------------------------

ACTION_BOUND = click.option(
    "--action-bound",
    type=click.FloatRange(min=0, min_open=True),
    help="Continuous actions lie in [-bound, bound] (the file does not say; default 1).",
)
DATASET_OUT = click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Where to write the dataset (NAME.zarr)."
)
REPLACE_FORCE = click.option("--force", is_flag=True, help="Replace OUT if it is an omgmg dataset.")


def _level_option(required: bool, default: str = ""):
    return click.option("--level", required=required, help=f"{LEVEL_NAMES}.{default}")


def _episode_limit_option(default: int | None):
    suites = ", ".join(f"{limit} ({suite})" for suite, limit in EPISODE_LIMITS.items())
    return click.option(
        "--episode-limit",
        default=default,
        show_default=default is not None,
        type=click.IntRange(min=1),
        help="Episodes this long are taken as time-limit truncations, shorter ones as terminations."
        + ("" if default is not None else f" Default: the suite's, {suites}."),
    )


def _rows_option(default: str):
    conventions = " ".join(f"{name}: {meaning}." for name, meaning in ROW_CONVENTIONS.items())
    return click.option(
        "--rows", type=click.Choice(list(ROW_CONVENTIONS)), help=f"How episode ends are marked. {conventions} {default}"
    )


def _import(src, out: Path, read) -> object:
    """Run one import (``read(progress)`` returns the dataset) under a bar, then say what came out."""
    with progress_bar("importing rows", None) as update:
        ds = read(update)
    collection = ds.meta["collection"]
    console.print(
        f"[bold green]imported[/] {escape(str(src))} -> {escape(str(out))}: {ds.spec.name}, {ds.level}, "
        f"{ds.n_episodes} episodes, {ds.n_transitions} transitions",
        highlight=False,
    )
    console.print(f"rows: {collection['row_convention'].split(':')[0]}", highlight=False)
    console.print(f"assumed: {collection['termination_rule']}", highlight=False)
    if "warning" in collection:
        warn(collection["warning"])
    _say_bound_share(ds)
    return ds


@main.group(name="import")
def import_group():
    """Convert datasets from other layouts (OMIGA's HDF5 files, OG-MARL's vaults) to omgmg datasets."""


@import_group.command(name="omiga")
@click.argument("src", type=DATASET)
@click.option("--task", required=True, help="MaMuJoCo task of the file, e.g. HalfCheetah-6x1.")
@_level_option(required=True)
@DATASET_OUT
@_episode_limit_option(EPISODE_LIMITS["mamujoco"])
@_rows_option("Default: detected from the episodes that reach the limit.")
@ACTION_BOUND
@REPLACE_FORCE
@friendly_errors
def import_omiga_cmd(src: Path, task: str, level: str, out: Path, episode_limit: int, rows, action_bound, force: bool):
    """Import an OMIGA MaMuJoCo HDF5 file (keys s, o, a, r, d): a path or a URL (hf://, http(s)://, s3://)."""
    from omgmg.datakit.format import normalise_level
    from omgmg.datakit.omiga import import_omiga

    level = normalise_level(level)  # an unknown level is a usage error (exit 2), as in collect
    bound = 1.0 if action_bound is None else action_bound
    _import(src, out, lambda progress: import_omiga(
        src, out, task=task, level=level, episode_limit=episode_limit, rows=rows, action_bound=bound,
        overwrite=force, progress=progress,
    ))  # fmt: skip


@import_group.command(name="og-marl")
@click.argument("vault", type=DATASET)
@DATASET_OUT
@click.option("--uid", help="Which dataset of a .vlt folder (e.g. Expert); needed when it holds several.")
@click.option(
    "--task",
    help="OG-MARL's ENV_NAME/SCENARIO, e.g. gymnasium_mamujoco/3hopper or smac_v2/terran_5_vs_5. "
    "Default: read from the path, {source}/{env_name}/{scenario}.vlt/{uid}.",
)
@_level_option(required=False, default=" Default: the uid, if it is one.")
@_episode_limit_option(None)
@_rows_option(
    "Default: detected (OG-MARL's recorder writes last-step rows, its conversions of OMIGA's files final-row)."
)
@ACTION_BOUND
@REPLACE_FORCE
@friendly_errors
def import_og_marl_cmd(vault: Path, out: Path, uid, task, level, episode_limit, rows, action_bound, force: bool):
    """Import an OG-MARL vault dataset (flashbax; needs omgmg[ogmarl]): VAULT is NAME.vlt/UID, NAME.vlt or
    a zipped vault as published (NAME.zip, unpacked aside), on disk or at a URL (hf://, http(s)://, s3://)."""
    from omgmg.datakit.format import normalise_level
    from omgmg.datakit.ogmarl import import_vault

    level = normalise_level(level)  # an unknown level is a usage error (exit 2), as in collect
    _import(vault, out, lambda progress: import_vault(
        vault, out, uid=uid, task=task, level=level, episode_limit=episode_limit, rows=rows,
        action_bound=action_bound, overwrite=force, progress=progress,
    ))  # fmt: skip


def _say_bound_share(ds) -> None:
    """What an imported dataset's learner will face: the share of its actions on a bound (and a warning)."""
    from omgmg.datakit.card import bound_share_line
    from omgmg.datakit.coverage import bound_share

    line, warning = bound_share_line(bound_share(ds))
    if line != "-":
        console.print(f"actions on a bound: {line}", highlight=False)
    if warning:
        warn(warning)


@main.command()
@click.argument("path", type=DATASET)
@click.option(
    "--format",
    "format_",
    required=True,
    type=click.Choice(["omiga", "og-marl"]),
    help="Target layout: OMIGA's HDF5 file or an OG-MARL vault (flashbax; needs omgmg[ogmarl]).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="omiga: the file (default: OMIGA's name for it, {Scenario}-v2-{agent_conf}-{level}.hdf5, beside PATH). "
    "og-marl: the NAME.vlt folder (default: vaults/{source}/{env_name}/{scenario}.vlt beside PATH, where OG-MARL "
    "looks).",
)
@click.option("--uid", help="og-marl: the dataset's name in the vault (default: its level, e.g. Medium-Expert).")
@click.option("--force", is_flag=True, help="Replace OUT (og-marl: OUT/UID) if omgmg exported it.")
@friendly_errors
def export(path: Path, format_: str, out: Path | None, uid: str | None, force: bool):
    """Export a dataset to another layout: OMIGA's HDF5 (the official OMIGA code trains on it) or an
    OG-MARL vault (OG-MARL's code trains on it)."""
    from omgmg.datakit import open_dataset
    from omgmg.datakit.omiga import export_omiga, omiga_file_name

    ds = open_dataset(path)
    if format_ == "og-marl":
        _export_vault(ds, out, uid, force)
        return
    if uid is not None:
        fail("--uid is for --format og-marl (a vault's dataset name); an OMIGA file has none")
    out = out or Path(path).parent / omiga_file_name(ds)
    with progress_bar("exporting rows", ds.n_transitions + ds.n_episodes) as update:
        export_omiga(ds, out, overwrite=force, progress=update)
    console.print(f"[bold green]exported[/] {path} -> {out}", highlight=False)
    console.print(
        "note: OMIGA's layout treats every episode end as terminal, time-limit truncations included", highlight=False
    )
    if ds.spec.options.get("obs_mode") != "omiga":
        console.print(
            "note: the data has local observations, so OMIGA's state s (= o) holds every agent's local "
            "observation; collect with --obs-mode omiga for OMIGA's own layout",
            highlight=False,
        )
    _say_behaviour_arrays_beside(ds, "in the file's omgmg/ group, which OMIGA's code does not read")


def _export_vault(ds, out: Path | None, uid: str | None, force: bool) -> None:
    from omgmg.datakit.ogmarl import default_vault_path, export_vault, vault_names

    out = out or default_vault_path(ds)
    with progress_bar("exporting rows", ds.n_transitions) as update:
        target = export_vault(ds, out, uid=uid, overwrite=force, progress=update)
    console.print(f"[bold green]exported[/] {ds.path} -> {target}", highlight=False)
    names = vault_names(ds.spec)
    vlt = target.parent.absolute()
    if (vlt.parent.parent.name, vlt.parent.name, vlt.name) == (names[0], names[1], f"{names[2]}.vlt"):
        reader = (
            f"OG-MARL's populate_from_vault(source={names[0]!r}, env_name={names[1]!r}, scenario_name={names[2]!r}, "
            f"dataset_name={target.name!r}, rel_dir={str(vlt.parents[2])!r})"
        )
    else:
        reader = f"flashbax's Vault(vault_name={vlt.name!r}, vault_uid={target.name!r}, rel_dir={str(vlt.parent)!r})"
    console.print(f"read it with {reader}", highlight=False)
    console.print(
        "note: OG-MARL's layout keeps no final observations; omgmg keeps them beside the vault, in "
        "omgmg-finals.npz, so importing it back gives this dataset",
        highlight=False,
    )
    _say_behaviour_arrays_beside(ds, "in omgmg-finals.npz, which OG-MARL's code does not read")


def _say_behaviour_arrays_beside(ds, where: str) -> None:
    if ds.behaviour_arrays:
        console.print(
            f"note: the target layout has no room for what the behaviour policy did ({', '.join(ds.behaviour_arrays)}"
            f"); it travels beside, {where}, and comes back on import",
            highlight=False,
        )


@main.command()
@click.argument("path", type=DATASET)
@click.argument("location")
@click.option(
    "--license",
    "license_",
    default="other",
    show_default=True,
    help="The card's license (a hub identifier, e.g. cc-by-4.0).",
)
@click.option("--force", is_flag=True, help="Replace a dataset omgmg published at LOCATION before (nothing else).")
@friendly_errors
def publish(path, location: str, license_: str, force: bool):
    """Publish a dataset to LOCATION (s3://BUCKET/NAME.zarr, gs://..., hf://datasets/ORG/REPO/NAME.zarr, or a
    folder) with a dataset card (README.md) and a manifest of every file's sha256, then read it back and
    validate it. Running it again resumes an interrupted publish."""
    from omgmg.datakit.publish import publish as run_publish

    with progress_bar("publishing files", None) as update:
        done = run_publish(path, location, license=license_, overwrite=force, progress=update)
    console.print(
        f"[bold green]published[/] {escape(str(path))} -> {escape(done['location'])}: {done['files']} files "
        f"({done['uploaded']} written, {done['kept']} already there), read back and validated",
        highlight=False,
    )
    console.print(f"card: {escape(done['location'].rstrip('/'))}/README.md   content sha256: {done['content_sha256']}")


@main.command()
@click.argument("url")
@DATASET_OUT
@REPLACE_FORCE
@friendly_errors
def download(url: str, out: Path, force: bool):
    """Copy a dataset from a URL (http(s)://, s3://, gs://, hf://datasets/ORG/REPO[@REVISION]/PATH) to OUT,
    checking every chunk and value on arrival; nothing is left at OUT unless all of it arrived intact. Every
    other command also reads URLs directly."""
    from omgmg.datakit.download import download as run_download
    from omgmg.datakit.hub import is_hub, pin

    url = pin(url) if is_hub(url) else url  # the commit it names now: what is said below, and fetched

    with progress_bar("downloading files", None) as update:
        path = run_download(url, out, overwrite=force, progress=update)
    console.print(f"[bold green]downloaded[/] {url} -> {path}: every chunk and value checked", highlight=False)


@main.command()
@click.argument("path", type=DATASET)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the upgraded dataset.")
@click.option("--force", is_flag=True, help="Replace OUT if it is an omgmg dataset.")
@friendly_errors
def upgrade(path: Path, out: Path, force: bool):
    """Rewrite a dataset of an older format (v1) as the current one (v2: every chunk checksummed).

    The source is validated first and never modified; the new store is written aside, validated and
    renamed into place.
    """
    from omgmg.datakit.upgrade import upgrade as run_upgrade

    with progress_bar("copying rows", None) as update:
        ds = run_upgrade(path, out, overwrite=force, progress=update)
    console.print(
        f"[bold green]upgraded[/] {path} -> {out} (format {ds.format_version}): {ds.n_episodes} episodes, "
        f"{ds.n_transitions} transitions",
        highlight=False,
    )


@main.command(name="list")
@click.option("--remote", is_flag=True, help="The public datasets omgmg can fetch by name (omgmg-data get NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@friendly_errors
def list_cmd(remote: bool, as_json: bool):
    """List datasets: those collected into $OMGMG_HOME, or with --remote the public ones `get` fetches by name
    (each with its location, what it was recorded on, whether omgmg evaluates it live, its publisher's numbers)."""
    if not remote:
        from omgmg.collectors.home import home_entries

        datasets = [e for e in home_entries() if e.kind == "dataset"]
        if as_json:
            click.echo(json.dumps([{"name": e.name, "bytes": e.bytes, "what": e.detail} for e in datasets], indent=2))
        elif datasets:
            console.print(_home_table(datasets))
        else:
            console.print("no dataset collected into $OMGMG_HOME yet (`--remote` lists public ones)", highlight=False)
        return
    from dataclasses import asdict

    from rich.table import Table

    from omgmg.datakit.registry import known_datasets, registry_file, sources

    known = known_datasets()
    if as_json:
        click.echo(json.dumps({name: asdict(k) for name, k in known.items()}, indent=2))
        return
    t = Table(show_edge=False)
    t.add_column("name", no_wrap=True, min_width=max(map(len, known), default=4))  # what `get` takes: never cut
    for col in ("level", "episodes", "transitions", "return", "live eval"):
        t.add_column(col, justify="right" if col in ("episodes", "transitions") else "left")
    for name, k in known.items():
        e = k.expected
        live = k.evaluable.split(",")[0].split(":")[0] if k.evaluable.startswith(("yes", "no")) else "StarCraft II only"
        t.add_row(name, k.level, str(e["trajectories"]), str(e["transitions"]),
                  f"{e['return_mean']:.1f} ± {e['return_std']:.1f}", live)  # fmt: skip
    console.print(t)
    console.print(f"registry: {registry_file()}", highlight=False)
    for who, where in sources().items():
        console.print(f"  {who}: {where}", highlight=False)
    console.print("fetch one: omgmg-data get NAME --out NAME.zarr   (locations and details: --json)", highlight=False)


@main.command()
@click.argument("name")
@DATASET_OUT
@REPLACE_FORCE
@friendly_errors
def get(name: str, out: Path, force: bool):
    """Fetch a public dataset by its name (`omgmg-data list --remote`), check it against its publisher's
    statistics and import it; nothing is written unless it matches."""
    from omgmg.datakit.registry import get as run_get
    from omgmg.datakit.registry import lookup

    entry = lookup(name)
    ds = _import(entry.location, out, lambda progress: run_get(name, out, overwrite=force, progress=progress))
    matched = ds.meta["collection"]["publisher_statistics"]["matched_with_done_flags"]
    console.print(
        f"matches its publisher's statistics ({entry.expected['trajectories']} episodes, "
        f"{entry.expected['transitions']} rows, return {entry.expected['return_mean']:.2f} ± "
        f"{entry.expected['return_std']:.2f}; done flags: {matched})",
        highlight=False,
    )
    console.print(f"evaluable: {entry.evaluable}", highlight=False)


@main.group(invoke_without_command=True)
@click.pass_context
@friendly_errors
def home(ctx):
    """List what omgmg keeps in $OMGMG_HOME (default ~/.omgmg): behaviour runs (with the training episodes
    medium-replay is collected from) and datasets collected without --out. `home prune` removes some."""
    if ctx.invoked_subcommand is not None:
        return
    from omgmg.collectors.home import home_entries
    from omgmg.datakit.outputs import data_home

    entries = home_entries()
    console.print(f"{data_home()}: {_home_size(entries)}", highlight=False)
    if not entries:
        console.print("nothing kept there yet", highlight=False)
        return
    console.print(_home_table(entries))
    console.print("`omgmg-data home prune --help` says how to remove some of it", highlight=False)


def _home_size(entries) -> str:
    from omgmg.datakit.outputs import human_bytes

    kinds = {"run": "behaviour run", "dataset": "dataset", "unfinished": "unfinished collection"}
    counts = {k: sum(1 for e in entries if e.kind == k) for k in kinds}
    parts = [f"{n} {kinds[k]}{'s' if n > 1 else ''}" for k, n in counts.items() if n]
    return f"{human_bytes(sum(e.bytes for e in entries))} in " + (", ".join(parts) or "nothing")


def _home_table(entries):
    from rich.table import Table

    from omgmg.datakit.outputs import human_bytes

    t = Table(show_edge=False)
    for col in ("kind", "name", "size", "of it training episodes", "what"):
        t.add_column(col, justify="right" if col in ("size", "of it training episodes") else "left")
    for e in entries:
        replay = human_bytes(e.replay_bytes) if e.kind == "run" else ""
        t.add_row(e.kind, e.name, human_bytes(e.bytes), replay, e.detail + (" (in use)" if e.in_use() else ""))
    return t


@home.command()
@click.argument("patterns", nargs=-1)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["run", "dataset", "unfinished"]),
    help="Only this kind (repeatable): behaviour runs, datasets, unfinished collections. Default: all.",
)
@click.option("--yes", is_flag=True, help="Remove without asking.")
@friendly_errors
def prune(patterns: tuple[str, ...], kinds: tuple[str, ...], yes: bool):
    """Remove entries of $OMGMG_HOME whose name matches a PATTERN (a glob, or a word matched anywhere, e.g.
    protoss_5v5 or 'runs/smacv2/*'; every entry when none is given). A removed behaviour run is trained again
    from scratch when a collection next needs it; entries another process is using are left alone."""
    from omgmg.collectors.home import KINDS, home_entries, select
    from omgmg.collectors.home import prune as run_prune
    from omgmg.datakit.outputs import human_bytes

    chosen = select(home_entries(), kinds or KINDS, patterns)
    if not chosen:
        console.print("nothing matches: `omgmg-data home` lists what is there", highlight=False)
        return
    console.print(_home_table(chosen))
    console.print(f"to remove: {_home_size(chosen)}", highlight=False)
    if not yes:
        if not sys.stdin.isatty():
            fail("not removing anything without a confirmation: pass --yes")
        click.confirm("remove these?", abort=True, err=True)
    freed, busy = run_prune(chosen)
    for e in busy:
        warn(f"{e.name} is in use by another omgmg process: left in place")
    n = len(chosen) - len(busy)
    console.print(f"[bold green]removed[/] {n} {'entry' if n == 1 else 'entries'}, {human_bytes(freed)} freed")


if __name__ == "__main__":
    main()
