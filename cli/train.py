"""``omgmg``: train and evaluate offline MARL algorithms on omgmg datasets.

Training options are generated from the algorithms' config dataclasses (``omgmg.algos``): every
field is an option with its docstring as help, so the dataclass stays the single source of truth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
from rich.markup import escape

from omgmg.algos import ALGORITHMS, MAX_MEMBERS, algorithm_class
from omgmg.cli.common import (
    DATASET,
    EXIT_INVALID,
    EXIT_USAGE,
    console,
    err_console,
    fail,
    friendly_errors,
    progress_bars,
    progress_interval,
    version_option,
    warn,
)
from omgmg.cli.options import config_options, given
from omgmg.trainer import CHECKPOINT_MINUTES


def _algorithm_options(fn):
    """One option per config field of any algorithm; --help shows each default that applies (the
    dataclass's and each suite's)."""
    from omgmg.algos import ALGORITHMS, algorithm_class, suite_defaults

    classes = {name: algorithm_class(name).config_cls for name in ALGORITHMS}
    return config_options(classes, suite_defaults={name: suite_defaults(name) for name in ALGORITHMS})(fn)


def _batchable() -> str:
    """Each algorithm's batchable loss hyperparameters, for --grid's help (``member_hyperparameters``)."""
    classes = {name: algorithm_class(name) for name in ALGORITHMS}
    return "; ".join(
        f"{name} {', '.join(c.member_hyperparameters)}" for name, c in classes.items() if c.member_hyperparameters
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@version_option()
def main():
    """Offline MARL training and evaluation (OMGMG and baselines)."""


DEVICE = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where to train: cpu, cuda, cuda:INDEX, or auto (a CUDA device when there is one).",
)


COMPILE = click.option(
    "--compile",
    "compile_update",
    is_flag=True,
    help="torch.compile each update; on a CUDA device its kernels are replayed as CUDA graphs (mode "
    "reduce-overhead). Off by default: on this project's 2-core CPU it made steps slower.",
)


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,7' -> [0, 2, 7]; ranges and lists combine ('0-2,9')."""
    usage = f"{text!r}: give seeds as a range 0-4, a list 0,1,2, or both (0-2,9)"
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):  # '', '0-', '-1', 'a': no seed to take
            raise click.BadParameter(usage)
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise click.BadParameter(f"{text!r}: the range {part.strip()} runs backwards; write {last}-{first}")
        if last - first + 1 + len(seeds) > MAX_MEMBERS:
            raise click.BadParameter(f"{text!r}: at most {MAX_MEMBERS} seeds in one program; split the run")
        seeds += list(range(first, last + 1))
    if len(set(seeds)) < len(seeds):
        raise click.BadParameter(f"{text!r}: each seed once")
    return seeds


def parse_grid(items: tuple[str, ...]) -> dict[str, list[float]]:
    """('lam=0,0.25,0.5', 'nu=1,10') -> {'lam': [0.0, 0.25, 0.5], 'nu': [1.0, 10.0]}."""
    grid: dict[str, list[float]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if name.strip() in grid:
            raise click.BadParameter(
                f"{name.strip()} is given twice; give its values once: {name.strip()}=V1,V2,...", param_hint="--grid"
            )
        try:
            grid[name.strip()] = [float(v) for v in values.split(",")] if sep else []
        except ValueError:
            grid[name.strip()] = []
        if not grid[name.strip()]:
            raise click.BadParameter(f"{item!r}: write NAME=V1,V2,... (e.g. lam=0,0.25,0.5)", param_hint="--grid")
    return grid


@main.command(context_settings={"show_default": False})
@click.option("--dataset", required=True, type=DATASET, help="An omgmg dataset: a .zarr folder or its URL.")
@click.option("--algo", default="omgmg", show_default=True, type=click.Choice(ALGORITHMS), help="Algorithm.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run directory (default runs/DATASET/ALGO-seedS); with --seeds or --grid, the folder that gets one run "
    "directory per member (default runs/DATASET).",
)
@click.option("--eval/--no-eval", "evaluate", default=True, help="Evaluate in the environment every eval_every steps.")
@click.option(
    "--tensorboard/--no-tensorboard",
    default=None,
    help="Also write TensorBoard event files to OUT/tensorboard (default: when tensorboard is installed).",
)
@DEVICE
@COMPILE
@click.option(
    "--checkpoint-minutes",
    type=click.FloatRange(min=0),
    default=CHECKPOINT_MINUTES,
    show_default=True,
    help="Between evaluations, also checkpoint at the first log step this many minutes after the last checkpoint, "
    "so an interrupted run resumes having lost at most about this much work (0: at every log step).",
)
@click.option(
    "--seeds",
    help="Train several seeds as one batched program (e.g. 0-4 or 0,1,2): one run directory per seed, each as a "
    "single run with that --seed writes.",
)
@click.option(
    "--grid",
    multiple=True,
    metavar="NAME=V1,V2,...",
    help="Also batch values of a loss hyperparameter (repeatable; members: every seed x every combination). Which "
    f"ones an algorithm batches: {_batchable()}.",
)
@_algorithm_options
@friendly_errors
def train(
    dataset: Path,
    algo: str,
    out: Path | None,
    evaluate: bool,
    tensorboard: bool | None,
    device: str,
    compile_update: bool,
    checkpoint_minutes: float,
    seeds: str | None,
    grid: tuple[str, ...],
    **options,
):
    """Train an algorithm on a dataset; running it again resumes the run."""

    from omgmg.algos import make_config, member_configs
    from omgmg.datakit import open_dataset
    from omgmg.trainer import train as run_train

    ds = open_dataset(dataset)  # once: the trainer takes it as it is
    suite = ds.spec.suite
    # dataclass defaults < per-suite defaults < options given; a wrong name or value is a ConfigError
    base = given(options)
    if evaluate and "eval_every" not in base:  # a short run still draws a learning curve, not one point
        resolved = make_config(algo, suite, **base)
        if resolved.steps < 2 * resolved.eval_every:
            base["eval_every"] = max(1, resolved.steps // 10)
            err_console.print(
                f"note: evaluating every {base['eval_every']} steps (a tenth of --steps {resolved.steps}); the "
                f"default {resolved.eval_every} would evaluate only at the end. --eval-every sets it",
                highlight=False,
            )
    seed_list = parse_seeds(seeds) if seeds is not None else None
    points = parse_grid(grid)
    if seed_list is None and not points:
        cfgs = [make_config(algo, suite, **base)]
        outs = [out or Path("runs") / Path(dataset).stem / f"{algo}-seed{cfgs[0].seed}"]
    else:  # the members of one batched program, each a run directory of the folder
        members = member_configs(algo, suite, base, seed_list, points)
        folder = out or Path("runs") / Path(dataset).stem
        cfgs, outs = [c for _, c in members], [folder / name for name, _ in members]
    several = len(cfgs) > 1
    with progress_bars() as bars:
        name = f"{algo} on {Path(dataset).name}" + (f" ({len(cfgs)} members)" if several else "")
        update = bars.add(name, cfgs[0].steps)

        def progress(step, total, evs):
            info = None
            if evs and evs[0].get("eval/return") is not None:
                returns = [ev["eval/return"] for ev in evs]
                wins = [ev.get("eval/win_rate") for ev in evs]
                info = "eval return " + " ".join(f"{r:.4g}" for r in returns)
                if wins[0] is not None:
                    info += ", win " + " ".join(f"{100 * w:.0f}%" for w in wins)
            update(step, info=info)

        result = run_train(
            algo,
            ds,
            cfgs if several else cfgs[0],
            outs if several else outs[0],
            evaluate=evaluate,
            progress=progress,
            warn=warn,
            tensorboard=tensorboard,
            device=device,
            compile_update=compile_update,
            checkpoint_minutes=checkpoint_minutes,
        )
    for r in result if several else [result]:
        _print_result(r.run_dir, r.final, r.best)


def _print_result(run_dir: Path, final: dict, best: dict | None) -> None:
    from rich.table import Table

    t = Table(title=f"{run_dir}", title_justify="left")
    for col in ("", "step", "return", "win rate", "Q_tot"):
        t.add_column(col, justify="right")
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    for label, rec in (("final", final), ("best*", best)):
        if rec:
            wr = rec.get("eval/win_rate")
            t.add_row(
                label,
                str(rec.get("step", "-")),
                fmt(rec.get("eval/return")),
                "-" if wr is None else f"{100 * wr:.1f}%",
                fmt(rec.get("value/q_tot")),
            )
    console.print(t)
    if best:
        console.print("* best: selected on these evaluation returns (optimistic); the final row is the result")
    console.print(f"curves: {run_dir / 'curves.png'}   log: {run_dir / 'log.jsonl'}", highlight=False)


@main.command(name="eval")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--dataset", type=DATASET, help="Dataset the policy was trained on (default: the one the run names).")
@click.option("--episodes", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=1234, show_default=True, type=int)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where to evaluate the policy: cpu, cuda, cuda:INDEX, or auto (a CUDA device when there is one).",
)
@click.option(
    "--checkpoint",
    default="final",
    show_default=True,
    type=click.Choice(["final", "best", "latest"]),
    help="final (= latest): the policy at the end of training. best: the one that scored highest in training's "
    "evaluations, i.e. selected on evaluation returns (an optimistic estimate: report it as such).",
)
@friendly_errors
def eval_cmd(run: Path, dataset: Path | None, episodes: int, seed: int, device: str, checkpoint: str):
    """Evaluate a trained run's policy in the environment of its dataset (by default its final policy).

    RUN is a run directory, a checkpoint file, or a folder of runs (`omgmg train --seeds/--grid`): each run is
    evaluated, and each setting's score is given as mean ± std over its seeds."""
    from omgmg.evaluation import evaluate_run
    from omgmg.experiments.runs import runs_to_evaluate

    checkpoint = "final" if checkpoint == "latest" else checkpoint
    try:
        groups, folder = runs_to_evaluate(run)
    except FileNotFoundError as e:
        fail(str(e))
    scores: dict[str, list[float]] = {}
    unit = "return"
    with progress_bars() as bars:
        update = bars.add("evaluating runs", sum(len(v) for v in groups.values()))
        for label, members in groups.items():
            for member in members:
                result = evaluate_run(
                    member, dataset, episodes=episodes, seed=seed, device=device, checkpoint=checkpoint
                )
                _print_evaluation(result, episodes, bars.result)
                wr = result["eval/win_rate"]
                unit = "win rate %" if wr is not None else "return"
                scores.setdefault(label, []).append(100 * wr if wr is not None else result["eval/return"])
                update(advance=1)
    if folder:
        for label, values in scores.items():
            console.print(
                f"[bold]{label}[/]: {np.mean(values):.4g} ± {np.std(values):.3g} over {len(values)} seed(s) ({unit})",
                highlight=False,
            )
    if checkpoint == "best":
        console.print(
            "note: the best checkpoint was selected on training's evaluation returns: this score is optimistic; "
            "report the final one (the default) as the result",
            highlight=False,
        )


def _print_evaluation(result: dict, episodes: int, print_line: Callable[[str], None]) -> None:
    wr = result["eval/win_rate"]
    print_line(
        f"[bold]{escape(str(result['path']))}[/] (step {result['step']}): return {result['eval/return']:.4g} ± "
        f"{result['eval/return_std']:.3g} over {episodes} episodes"
        + ("" if wr is None else f", win rate {100 * wr:.1f}%")
    )
    if result["checkpoint"] == "final" and result["step"] < result["steps"]:
        warn(
            f"the run stopped at step {result['step']} of {result['steps']}: this is its newest policy, not a "
            "finished run's"
        )


def _shipped_specs_epilog() -> str:
    from omgmg.experiments.spec import shipped_specs

    names = shipped_specs()
    lines = [", ".join(names[i : i + 4]) for i in range(0, len(names), 4)]
    return "\b\nShipped specs:\n" + "\n".join(f"  {line}" for line in lines)  # \b: click keeps the lines as they are


@main.command(epilog=_shipped_specs_epilog())
@click.argument("spec")
@click.option(
    "--out",
    help="Sweep directory (default sweeps/NAME or sweeps/NAME-smoke), or a URL (s3://BUCKET/sweeps/NAME, ...) "
    "where the results, run directories and report go, so the machines of a cluster share nothing else.",
)
@click.option("--smoke", is_flag=True, help="The spec's small budget: a check that finishes in minutes on 2 cores.")
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: a process pool on this machine; ray: Ray tasks on an existing cluster (or a local one).",
)
@click.option("--address", help="Ray cluster address for --backend ray (default: start a local Ray instance).")
@click.option("--workers", type=int, help="Parallel cells (default: the CPU count).")
@click.option("--list", "list_only", is_flag=True, help="Only list the cells and whether each is finished.")
@click.option(
    "--rates",
    type=click.Path(path_type=Path),
    help="With --list: estimate the device-hours of the unfinished cells (jobs as --members-per-job packs them) "
    "from speeds measured on the sweep's device by `benchmarks/train.py --members 1,10 --out RATES.json`.",
)
@click.option(
    "--only",
    multiple=True,
    metavar="PATTERN",
    help="Run only the cells whose SUITE/NAME (as --list prints it) matches this glob, e.g. 'smacv2/*' or "
    "'*-omgmg-*' (a word without wildcards matches anywhere: zerg); repeatable. Splits one spec across "
    "machines: `omgmg report --with-results` merges the parts.",
)
@click.option(
    "--reuse",
    multiple=True,
    metavar="SWEEP_DIR",
    help="Take the results of cells with the same key (algorithm, resolved config, seed and data) from another "
    "sweep's directory, or results exported from one, instead of training them again: e.g. the default point of "
    "one knob's selection in the next knob's. Repeatable; with --list, such cells are listed as 'reuse'.",
)
@click.option(
    "--members-per-job",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Train up to this many cells that differ only in seed (or in a hyperparameter the algorithm batches) as "
    "one batched job; 1 on CPUs, where batching saves little (benchmarks/train.py --members); 10-20 on a GPU.",
)
@click.option(
    "--torch-threads",
    type=click.IntRange(min=1),
    help="Torch threads per cell (default: the CPU count divided by --workers). 1 when other work keeps cores "
    "busy: a multi-threaded CPU step slows down many times when one of its threads is descheduled.",
)
@DEVICE
@click.option(
    "--gpus-per-job",
    type=click.FloatRange(min=0, min_open=True),
    help="With --backend ray --device cuda: the GPUs each packed job asks Ray for (default 1); a fraction "
    "shares a GPU between jobs (0.5: two per GPU).",
)
@COMPILE
@friendly_errors
def sweep(
    spec: str,
    out: Path | None,
    smoke: bool,
    backend: str,
    address: str | None,
    workers: int | None,
    list_only: bool,
    rates: Path | None,
    only: tuple[str, ...],
    reuse: tuple[str, ...],
    members_per_job: int,
    torch_threads: int | None,
    device: str,
    gpus_per_job: float | None,
    compile_update: bool,
):
    """Run every cell (datasets x algorithms x seeds x grid) of an experiment SPEC not yet finished.

    SPEC is a TOML file or a shipped name (listed below; docs/experiments.md describes them). Re-running
    resumes: finished cells are skipped, unfinished ones continue from their last checkpoint.
    """
    from omgmg.experiments.report import write_report
    from omgmg.experiments.spec import load_spec
    from omgmg.experiments.sweep import (
        DataContent,
        cell_dir,
        cell_name,
        dataset_path,
        pending_cells,
        resume_step,
        reusable_results,
        reuses,
        run_sweep,
        select_cells,
        trained_on,
    )

    experiment = load_spec(spec)  # a SpecError is a usage error (exit 2), as a SweepError below
    from omgmg.experiments import store

    out = out or Path("sweeps") / (experiment.name + ("-smoke" if smoke else ""))
    out = out if store.is_store(out) else Path(out)
    local = store.staging(str(out)) if store.is_store(out) else out  # this machine's copy of the results
    if list_only:
        cells = select_cells(experiment.cells(smoke), only)
        if store.is_store(out):
            store.pull_results(str(out), local)
        offered = reusable_results(local, reuse) if reuse else {}
        _, _, data = experiment.resolved(smoke)
        content = DataContent()
        judged = {  # True: trained on this machine's data; None: that data is not generated yet
            c.key: trained_on(offered[c.key]["result"], dataset_path(c.dataset, data), content)
            for c in cells
            if reuses(local, c, offered)
        }
        taken = {k for k, same in judged.items() if same is not False}
        todo = {c.key for c in pending_cells(local, cells)} - taken
        for c in cells:
            step = resume_step(cell_dir(local, c) / "run") if c.key in todo else None
            at = f"  (resumes at step {step:,} of {c.config['steps']:,})" if step is not None and step >= 0 else ""
            if judged.get(c.key) is None and c.key in taken:
                at = "  (if the data generated here is the data it was trained on)"
            elif judged.get(c.key) is False:
                at = "  (offered, but trained on other data than this machine's)"
            state = "reuse" if c.key in taken else "todo" if c.key in todo else "done"
            console.print(f"{state:<5} {cell_name(c)}{at}", highlight=False)
        from_others = f", {len(taken)} taken from other sweeps" if taken else ""
        finished = len(cells) - len(todo) - len(taken)
        console.print(f"{len(cells)} cells, {finished} finished{from_others}", highlight=False)
        if rates is not None:
            print_estimate([c for c in cells if c.key in todo], local, rates, members_per_job, compile_update)
        return
    if rates is not None:
        raise click.UsageError("--rates estimates a sweep's cost with --list; it does not change a run")
    with progress_bars() as bars:
        update = bars.add(f"sweep {experiment.name}{' (smoke)' if smoke else ''}")
        update(info="preparing datasets")

        # progress in cells, a training cell counting the share of its steps done: a packed job's cells
        # finish together, and a count of finished cells alone would time the sweep by its jobs' sizes
        finished_cells, trained_share = [0], {}

        def show(**info):
            update(finished_cells[0] + sum(trained_share.values()), **info)

        def on_start(total, finished, started):
            finished_cells[0] = finished
            trained_share.update(started)
            update(total=total)
            resumed = f", {len(started)} resume part-way" if started else ""
            show(info=f"{finished} already finished{resumed}")

        def on_done(cell, result):
            score = result.get("score")
            info = (
                "skipped: in use by another process"
                if result.get("skipped")
                else "error"
                if score is None
                else f"{score:.3g}"
            )
            finished_cells[0] += 1
            trained_share.pop(cell.key, None)
            show(info=f"last: {cell.dataset.name} {cell.algorithm} seed {cell.seed} -> {info}")
            for warning in result.get("warnings", []):  # e.g. a damaged checkpoint it resumed past
                bars.note(f"warning: {cell_name(cell)}: {warning}")

        def on_running(running):
            cell, step = running[0]
            more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
            steps = cell.config.get("steps")
            for c, s in running:  # a cell counts whole at its result: its final evaluation may take minutes
                trained_share[c.key] = min(0.99, s / c.config["steps"])
            show(info=f"training, step {step:,}/{steps:,}: {cell.dataset.name} {cell.algorithm} seed {cell.seed}{more}")

        results = run_sweep(
            experiment,
            out,
            smoke=smoke,
            backend=backend,
            workers=workers,
            address=address,
            on_note=bars.note,
            on_start=on_start,
            on_done=on_done,
            on_running=on_running,
            running_every=progress_interval(),
            members_per_job=members_per_job,
            device=device,
            compile_update=compile_update,
            threads=torch_threads,
            only=only,
            gpus_per_job=gpus_per_job,
            reuse=reuse,
        )
    errors = [r for r in results if r.get("error")]
    paths = write_report(local)
    if store.is_store(out):  # the report goes beside the results in the store; this machine keeps a copy
        for path in paths:
            store.put(str(out).rstrip("/"), path.name, path.read_bytes())
        paths = [f"{str(out).rstrip('/')}/{path.name}" for path in paths]
    console.print(f"{len(results)} cells finished ({len(errors)} with errors) in {out}", highlight=False)
    for r in errors:
        console.print(
            f"  [red]error[/] {r['cell']['algorithm']} on {r['cell']['dataset']}: {r['error']}", highlight=False
        )
    console.print("report: " + "  ".join(str(p_) for p_ in paths), highlight=False)
    if errors:  # a sweep with failed cells did not do what was asked: say so in the exit code
        fail(f"{len(errors)} of {len(results)} cells failed; running the sweep again retries them", EXIT_INVALID)


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def print_estimate(todo, local: Path, rates_path: Path, members_per_job: int, compiled: bool) -> None:
    """The cost of the unfinished cells (their runs in ``local``) at measured speeds (omgmg.experiments.cost)."""
    from omgmg.experiments import cost
    from omgmg.experiments.sweep import cell_dir, pack_cells, resume_step

    try:
        rates = cost.load_rates(rates_path, compiled=compiled)
    except cost.RatesError as e:
        raise click.UsageError(str(e)) from None

    def done_steps(cell) -> int:  # a started cell costs only the steps it has left
        return max(0, resume_step(cell_dir(local, cell) / "run") or 0)

    est = cost.estimate(pack_cells(todo, local, members_per_job), rates, done_steps)
    console.print(
        f"to train: {est.cells} cells as {est.jobs} jobs, {est.member_steps:,} member-steps left", highlight=False
    )
    console.print(
        f"  {_hours(est.device_hours)} device-hours at the speeds in {rates.source} "
        f"({', '.join(sorted(rates.devices))}; gradient steps only: evaluations and dataset generation come on top)",
        highlight=False,
    )
    if len(est.by_algorithm) > 1:
        shares = sorted(est.by_algorithm.items(), key=lambda kv: -kv[1])
        console.print(
            "  by algorithm: " + ", ".join(f"{a} {_hours(s / 3600)}" for a, s in shares) + " device-hours",
            highlight=False,
        )
    for line in sorted(est.stand_ins):
        console.print(f"  measured stand-in: {line}", highlight=False)
    for algorithm, shapes in sorted(est.unmeasured.items()):
        console.print(
            f"  [yellow]not counted[/]: {algorithm} on {', '.join(sorted(shapes))} (no such row in {rates.source})",
            highlight=False,
        )


@main.command()
@click.argument("sweep_dir", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), help="Where to write the report (default: the sweep directory)."
)
@click.option(
    "--marl-eval",
    "marl_eval_json",
    is_flag=True,
    help="Also write NAME.marl-eval.json: every evaluation in marl-eval's layout (BenchMARL, OG-MARL, Mava).",
)
@click.option(
    "--with-results",
    is_flag=True,
    help="Also copy the results (sweep.json, each cell's result.json with its evaluations; no logs or "
    "checkpoints) into --out, and report on everything there: a results-only sweep directory to commit, merge "
    "parts of a split sweep into, or continue from.",
)
@friendly_errors
def report(sweep_dir: Path, out: Path | None, marl_eval_json: bool, with_results: bool):
    """Tables (markdown + CSV, best per row in bold) and ablation figures (PNG) from a sweep's results; for a
    folder of runs (`omgmg train --seeds/--grid`), each setting's final score, mean ± std over its seeds."""
    from omgmg.experiments.report import export_results, write_report

    if with_results and out is None:
        fail("--with-results copies the results into --out: name that directory", EXIT_USAGE)
    if not (sweep_dir / "sweep.json").exists() and not with_results:  # a folder of --seeds/--grid runs?
        from omgmg.experiments.runs import member_runs, write_runs_report

        try:
            member_runs(sweep_dir)
        except FileNotFoundError:
            what = "is neither a sweep directory (no sweep.json) nor a folder of runs"
            fail(
                f"{sweep_dir} {what if sweep_dir.is_dir() else 'does not exist'}; give what `omgmg sweep` wrote, "
                "or what `omgmg train --seeds` / `--grid` wrote (a folder of run directories, or a folder of such "
                "folders)",
                EXIT_USAGE,
            )
        else:
            if marl_eval_json:
                fail("--marl-eval is for sweep directories; a folder of runs has no marl-eval export yet", EXIT_USAGE)
            paths = write_runs_report(sweep_dir, out)
            console.print(paths[0].read_text(), highlight=False, markup=False)
            console.print("written: " + "  ".join(str(p) for p in paths), highlight=False)
            return
    try:
        if with_results:
            copied = export_results(sweep_dir, out)
            console.print(f"{copied} results copied into {out}", highlight=False)
            sweep_dir = out
        paths = write_report(sweep_dir, out, marl_eval_json=marl_eval_json)
    except FileNotFoundError as e:
        fail(str(e), EXIT_USAGE)
    console.print(paths[0].read_text(), highlight=False, markup=False)
    console.print("written: " + "  ".join(str(p) for p in paths), highlight=False)


@main.command()
@click.argument("dataset", type=DATASET)
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--streaming", is_flag=True, help="Use the bounded-memory streaming loader.")
@friendly_errors
def batch(dataset: Path, batch_size: int, seed: int, streaming: bool):
    """Show one minibatch exactly as trainers receive it from the shared loader."""
    from dataclasses import fields

    from rich.table import Table

    from omgmg.datakit import TransitionLoader

    loader = TransitionLoader(dataset, batch_size=batch_size, seed=seed, streaming=streaming)
    b = loader.sample()
    table = Table(title=f"one batch from {dataset} (seed {seed})", title_justify="left")
    for col in ("field", "shape", "dtype", "first row"):
        table.add_column(col)
    for f in fields(b):
        v = getattr(b, f.name)
        if v is None:
            continue
        first = v[0].flatten()[:6].tolist()
        table.add_row(
            f.name,
            str(tuple(v.shape)),
            str(v.dtype).removeprefix("torch."),
            ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in first),
        )
    console.print(table)


if __name__ == "__main__":
    main()
