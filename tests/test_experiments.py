"""Experiment specs, sweeps (local and Ray, resumable) and reports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import bc_sweep_toml

from omgmg.cli.train import main as train_cli
from omgmg.collectors.fixtures import make_fixture
from omgmg.experiments.report import aggregate, normalised, write_report
from omgmg.experiments.spec import SPEC_DIR, Cell, SpecError, load_spec, parse_spec, shipped_specs
from omgmg.experiments.sweep import dataset_path, load_results, pack_cells, pending_cells, reference_levels, run_sweep

BUDGET = {"steps": 20, "eval_every": 20, "eval_episodes": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("sweep") / "c.zarr", "continuous", episodes=20)


def spec_dict(dataset, **changes) -> dict:
    raw = {
        "name": "tiny",
        "algorithms": ["bc", "omgmg"],
        "seeds": [0, 1],
        "budget": dict(BUDGET),
        "datasets": [{"path": str(dataset.path), "label": "fixture"}],
        "smoke": {"seeds": [0], **BUDGET},
        "overrides": {"omgmg": {"hidden": 16}, "bc": {"hidden": 16}},
    }
    return raw | changes


# ----- specs --------------------------------------------------------------------------------------------------------


def test_the_paper_specs_ship_and_expand_to_the_papers_cells():
    assert {"table1", "table2", "ablation-lambda", "ablation-nu"} <= set(shipped_specs())
    sweep_help = CliRunner().invoke(train_cli, ["sweep", "--help"]).output
    assert all(name in sweep_help for name in shipped_specs()), "omgmg sweep --help names every shipped spec"
    t1, t2 = load_spec("table1"), load_spec("table2")
    assert len(t1.cells()) == 3 * 4 * 6 * 5 and len(t1.cells(smoke=True)) == 3 * 4 * 6
    assert len(t2.cells()) == 3 * 4 * 6 * 5
    lam = load_spec("ablation-lambda").cells(smoke=True)
    assert sorted({c.config["lam"] for c in lam}) == [0.0, 0.25, 0.5, 0.75, 1.0]
    nu = load_spec("ablation-nu").cells(smoke=True)
    assert {c.config["lam"] for c in nu} == {0.5} and sorted({c.config["nu"] for c in nu}) == [
        0.001,
        0.01,
        0.1,
        1.0,
        10.0,
    ]
    assert all(c.config["steps"] == load_spec("table1").smoke["steps"] for c in t1.cells(smoke=True))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"algorithms": ["omgmg", "sac"]}, "unknown algorithm(s) sac"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"grid": {"lam": [0.5, 1.5]}, "algorithms": ["omgmg"], "overrides": {}}, "lam must lie in [0, 1]"),
        ({"grid": {"lam": [0.5]}}, "lam is not a hyperparameter of bc"),
        ({"grid": {"cql_alpha": [1.0]}}, "cql_alpha is not a hyperparameter of bc"),
        ({"layout": "ablation"}, "layout 'ablation' needs a [grid]"),
        ({"layout": "selection", "algorithms": ["bc", "omgmg"], "grid": {"lr": [1e-3]}}, "list one algorithm"),
        ({"budget": {"steps": 10}}, "[budget] must set exactly steps, eval_every, eval_episodes"),
        ({"datasets": [{"suite": "mamujoco", "task": "Hopper-3x1", "levels": ["good"]}]}, "unknown level 'good'"),
        ({"overrides": {"icq": {"beta": 1.0}}}, "[overrides.icq]: icq is not among the spec's algorithms"),
    ],
)
def test_spec_errors_name_the_key_and_the_fix(dataset, change, message):
    with pytest.raises(SpecError) as e:
        parse_spec(spec_dict(dataset, **change), source="s.toml")
    assert message in str(e.value) and str(e.value).startswith("s.toml:")


def test_missing_smoke_and_unknown_spec_names_are_refused(dataset):
    raw = spec_dict(dataset)
    del raw["smoke"]
    with pytest.raises(SpecError, match="missing required key 'smoke'"):
        parse_spec(raw)
    with pytest.raises(SpecError, match="one of: ablation-lambda"):
        load_spec("table9")


def test_a_selection_holds_its_winner_against_the_default_each_suite_runs_without_the_grid():
    from omgmg.algos import make_config

    spec = load_spec("select-clean-icq-beta")  # ICQ's beta has a default per suite
    assert spec.layout == "selection" and spec.knob_defaults() == {
        suite: make_config("icq", suite).beta for suite in ("mamujoco", "smacv2")
    }
    assert make_config("icq", "mamujoco").beta != make_config("icq", "smacv2").beta
    # and averages each suite's score over all of the suite's datasets, which the sweep records for its report
    assert spec.suite_datasets() == {
        "mamujoco": [["Hopper-3x1-omiga-rollouts1", "medium"], ["HalfCheetah-6x1-omiga-rollouts1", "medium"]],
        "smacv2": [["protoss_5v5-rollouts1", "medium"]],
    }


def test_sweep_json_names_a_shipped_spec_not_this_installs_path(tmp_path):
    # sweep.json records spec.source; exported results are committed and read on other machines
    assert load_spec("paper-check").source == "paper-check"
    mine = tmp_path / "mine.toml"
    mine.write_text((SPEC_DIR / "paper-check.toml").read_text())
    assert load_spec(mine).source == str(mine)


def test_a_sweep_folder_named_after_a_shipped_spec_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper-check").mkdir()  # `omgmg sweep paper-check --out paper-check`, run again from here
    assert load_spec("paper-check").name == "paper-check"
    (tmp_path / "mine").mkdir()
    with pytest.raises(SpecError, match="mine is a folder; give a TOML spec file"):
        load_spec("mine")


def test_cell_hashes_are_stable_and_change_with_any_hyperparameter(dataset):
    a = parse_spec(spec_dict(dataset)).cells()
    b = parse_spec(spec_dict(dataset)).cells()
    assert [c.key for c in a] == [c.key for c in b] and len({c.key for c in a}) == 4
    changed = parse_spec(
        spec_dict(dataset, overrides={"omgmg": {"hidden": 16, "nu": 0.3}, "bc": {"hidden": 16}})
    ).cells()
    same = {c.key for c in a} & {c.key for c in changed}
    assert same == {c.key for c in a if c.algorithm == "bc"}  # only the edited algorithm's cells change
    longer = parse_spec(spec_dict(dataset, budget={**BUDGET, "steps": 21})).cells()
    assert not {c.key for c in a} & {c.key for c in longer}


# ----- sweeps -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_refuses_a_folder_of_someone_elses_files_and_touches_none(dataset, tmp_path):
    from omgmg.experiments.sweep import SweepError, _check_sweep_folder

    theirs = tmp_path / "thesis"
    theirs.mkdir()
    (theirs / "tiny.md").write_text("my notes")  # the name the sweep's report would take
    spec = parse_spec(spec_dict(dataset))
    with pytest.raises(SweepError, match=r"holds files no sweep wrote \(tiny.md\) and no sweep.json: give --out"):
        run_sweep(spec, theirs, workers=1, on_note=lambda m: None)
    assert sorted(p.name for p in theirs.iterdir()) == ["tiny.md"] and (theirs / "tiny.md").read_text() == "my notes"
    empty = tmp_path / "empty"
    empty.mkdir()
    _check_sweep_folder(empty)  # a new or empty folder is the sweep's
    (empty / f".sweep.json.{os.getpid()}.tmp").write_text("{")  # a sweep killed while writing its sweep.json
    _check_sweep_folder(empty)


def test_a_cell_whose_result_is_not_a_result_is_pending_not_finished(dataset, tmp_path):
    """A result.json damaged into valid JSON that is not an object (``[]``, ``null``) counted as finished:
    the sweep skipped the cell and its report then refused the file."""
    from omgmg.experiments.sweep import cell_dir

    cells = parse_spec(spec_dict(dataset)).cells()
    for cell, text in zip(cells, ["[]", "null", '{"key": "k", "error": "boom"}', '{"key": "k", "score": 1.0}']):
        (cell_dir(tmp_path, cell)).mkdir(parents=True)
        (cell_dir(tmp_path, cell) / "result.json").write_text(text)
    assert [c.key for c in pending_cells(tmp_path, cells)] == [c.key for c in cells[:3]]


def test_an_interrupted_sweep_resumes_and_runs_only_the_missing_cells(dataset, tmp_path):
    spec = parse_spec(spec_dict(dataset))
    ran = []

    class Stop(Exception):
        pass

    def stop_after_two(cell, result):
        ran.append(cell.key)
        if len(ran) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(spec, tmp_path / "sw", workers=1, on_done=stop_after_two, on_note=lambda m: None)
    assert len(pending_cells(tmp_path / "sw", spec.cells())) == 2
    second = []
    results = run_sweep(
        spec, tmp_path / "sw", workers=1, on_done=lambda c, r: second.append(c.key), on_note=lambda m: None
    )
    assert len(second) == 2 and not set(second) & set(ran)  # only the two missing cells ran
    assert len(results) == 4 and all(np.isfinite(r["score"]) and not r.get("error") for r in results)
    by_algorithm = {r["cell"]["algorithm"]: r for r in results}  # where the policy acts, kept for the figures
    assert all("policy/action_distance" in by_algorithm[a]["mechanism"] for a in ("omgmg", "bc"))  # BC: the yardstick
    again = []
    run_sweep(spec, tmp_path / "sw", workers=1, on_done=lambda c, r: again.append(c), on_note=lambda m: None)
    assert again == []  # everything finished: nothing runs
    edited = parse_spec(spec_dict(dataset, overrides={"omgmg": {"hidden": 16, "nu": 0.3}, "bc": {"hidden": 16}}))
    third = []
    results = run_sweep(
        edited, tmp_path / "sw", workers=1, on_done=lambda c, r: third.append(c.algorithm), on_note=lambda m: None
    )
    assert third == ["omgmg", "omgmg"]  # only the edited algorithm's cells run again
    _, reported = load_results(tmp_path / "sw")
    assert len(reported) == 4 and {
        r["cell"]["config"]["nu"] for r in reported if r["cell"]["algorithm"] == "omgmg"
    } == {0.3}


def test_a_long_cell_is_never_silent_its_step_is_reported_while_it_trains(dataset, tmp_path):
    budget = {"steps": 3000, "eval_every": 3000, "eval_episodes": 1}
    one_cell = {"algorithms": ["bc"], "seeds": [0], "overrides": {"bc": {"hidden": 16}}, "budget": budget}
    spec = parse_spec(spec_dict(dataset, **one_cell))
    seen = []
    results = run_sweep(spec, tmp_path / "sw", workers=1, on_note=lambda m: None, running_every=0.05,
                        on_running=lambda running: seen.extend(step for _, step in running))  # fmt: skip
    assert seen and 0 < min(seen) < 3000 and seen == sorted(seen)  # read from the cell's log as it grows
    import socket

    from omgmg.experiments.report import write_report

    assert (results[0]["device"], results[0]["node"]) == ("cpu", socket.gethostname())  # where it trained
    md = write_report(tmp_path / "sw")[0].read_text()
    assert f"Trained on cpu (1 cell), on 1 machine ({socket.gethostname()})" in md


def test_a_job_that_mixes_a_started_cell_with_a_fresh_one_trains_both_instead_of_failing(dataset, tmp_path):
    """A sweep in a store packs its jobs before it sees the store's checkpoints: a job can hold a cell that
    an earlier, differently packed job started and one that never ran. One batched program cannot resume
    both (the trainer refuses); the job trains them as two, and every retry no longer fails the same way."""
    from omgmg.experiments.sweep import run_cells

    budget = {"steps": 40, "eval_every": 20, "eval_episodes": 1}
    raw = spec_dict(dataset, algorithms=["bc"], seeds=[0, 1], budget=budget, overrides={"bc": {"hidden": 16}})
    started, fresh = parse_spec(raw).cells()
    dirs = [str(tmp_path / "sw" / "cells" / c.dirname) for c in (started, fresh)]
    (first,) = run_cells([started.to_json()], dirs[:1], str(dataset.path), 1)  # checkpoints at 20 and 40
    assert first.get("error") is None
    both = run_cells([started.to_json(), fresh.to_json()], dirs, str(dataset.path), 1)
    assert [r.get("error") for r in both] == [None, None] and both[0]["score"] == first["score"]
    assert all(r.get("packed_with") is None for r in both)  # two programs of one member each
    # a damaged checkpoint: the cell resumes from the one before, and its result says so (the sweep shows it)
    latest = Path(dirs[1]) / "run" / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:500])
    (Path(dirs[1]) / "result.json").unlink()
    (again,) = run_cells([fresh.to_json()], dirs[1:], str(dataset.path), 1)
    assert again.get("error") is None and again["resumed_from"] == 20
    assert len(again["warnings"]) == 1 and "continuing from the previous checkpoint" in again["warnings"][0]


def test_a_cell_started_by_an_earlier_sweep_and_waiting_its_turn_is_not_reported_as_training(dataset, tmp_path):
    from omgmg.experiments.sweep import _watching, cell_dir

    spec = parse_spec(spec_dict(dataset, algorithms=["bc"], overrides={"bc": {"hidden": 16}}))
    waiting, training = spec.cells()
    sweep_dir = tmp_path / "sw"
    for cell, steps in ((waiting, (2000, 3000)), (training, (100,))):
        (cell_dir(sweep_dir, cell) / "run").mkdir(parents=True)
        (cell_dir(sweep_dir, cell) / "run" / "log.jsonl").write_text(
            "".join(json.dumps({"step": s}) + "\n" for s in steps)
        )
    hour_ago = time.time() - 3600  # the waiting cell's log: from the sweep that was interrupted
    os.utime(cell_dir(sweep_dir, waiting) / "run" / "log.jsonl", (hour_ago, hour_ago))
    seen = []
    with _watching(sweep_dir, [waiting, training], lambda c: cell_dir(sweep_dir, c), seen.append, every=0.02):
        time.sleep(0.3)
        with open(cell_dir(sweep_dir, training) / "run" / "log.jsonl", "a") as f:  # the trainer writes on
            f.write(json.dumps({"step": 200}) + "\n")
        time.sleep(0.3)
    reported = {(c.key, step) for running in seen for c, step in running}
    assert (training.key, 200) in reported and all(key == training.key for key, _ in reported)


def test_the_step_of_a_run_log_is_its_last_complete_line_however_short_or_long(tmp_path):
    from omgmg.experiments.sweep import last_step

    log = tmp_path / "log.jsonl"
    assert last_step(log) is None
    log.write_text(json.dumps({"step": 100}) + "\n")
    assert last_step(log) == 100  # one line: read whole, not taken for a cut tail
    with open(log, "a") as f:
        f.write(json.dumps({"step": 200}) + '\n{"step": 3')  # a line being written
    assert last_step(log) == 200
    log.write_text("".join(json.dumps({"step": s, "pad": "x" * 500}) + "\n" for s in range(1, 1001)))
    assert last_step(log) == 1000  # longer than the tail that is read


def test_jobs_get_absolute_paths_whatever_the_cwd_of_the_process_that_runs_them(dataset, tmp_path, monkeypatch):
    # a Ray task runs in its node's working directory: a relative --out once scattered results there
    from pathlib import Path

    from omgmg.experiments import sweep

    monkeypatch.chdir(dataset.path.parent)
    spec = parse_spec(spec_dict(dataset, datasets=[{"path": dataset.path.name, "label": "fixture"}]))
    jobs = []

    class Seen(Exception):
        pass

    def capture(stages, workers, address, done):
        jobs.extend(job for stage in stages for job in stage)
        raise Seen

    monkeypatch.setattr(sweep, "_run_local", capture)
    with pytest.raises(Seen):
        run_sweep(spec, "relative-sweep", workers=1, on_note=lambda m: None)
    assert jobs and all(Path(out).is_absolute() for job in jobs for out in job[1])
    assert all(Path(job[2]).is_absolute() and Path(job[2]).exists() for job in jobs)


def test_a_cell_trained_on_a_node_without_this_disk_reports_through_its_returned_result(dataset, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    # on a cluster whose nodes share no disk, a task's files stay on its node; its result comes back with it
    from omgmg.experiments import sweep
    from omgmg.experiments.report import write_report

    real = sweep.run_cells
    elsewhere = tmp_path / "other-node"

    def on_another_node(cells_json, outs, *rest):
        return real(cells_json, [str(elsewhere / Path(o).name) for o in outs], *rest)

    monkeypatch.setattr(sweep, "run_cells", on_another_node)
    spec = parse_spec(spec_dict(dataset, algorithms=["bc"], overrides={"bc": {"hidden": 16}}))
    results = run_sweep(spec, tmp_path / "sw", workers=1, on_note=lambda m: None)
    assert len(results) == 2 and all(r.get("score") is not None for r in results)
    assert len(list((tmp_path / "sw" / "cells").glob("*/result.json"))) == 2 and elsewhere.exists()
    assert "Trained on cpu (2 cells)" in write_report(tmp_path / "sw")[0].read_text()


def test_ray_jobs_ask_for_a_whole_gpu_or_a_share_of_one():
    from omgmg.experiments.sweep import SweepError, ray_gpus

    assert ray_gpus("cpu", None, "ray") == 0 and ray_gpus("cuda", None, "ray") == 1
    assert ray_gpus("cuda:1", 0.25, "ray") == 0.25 and ray_gpus("cuda", 2, "ray") == 2
    for device, share, backend in (("cuda", 0.5, "local"), ("cpu", 0.5, "ray"), ("cuda", 1.5, "ray")):
        with pytest.raises(SweepError):
            ray_gpus(device, share, backend)


def test_a_packed_sweep_trains_seeds_and_grid_points_as_one_job_each_cell_in_its_own_run(dataset, tmp_path):
    raw = spec_dict(dataset, algorithms=["omgmg"], layout="ablation", grid={"nu": [1.0, 10.0]})
    spec = parse_spec(raw | {"overrides": {"omgmg": {"hidden": 16}}})
    cells = spec.cells()  # 2 seeds x 2 values of nu
    assert sorted(len(j) for j in pack_cells(cells, tmp_path / "sw", members_per_job=3)) == [1, 3]
    done = []
    results = run_sweep(spec, tmp_path / "sw", workers=1, members_per_job=4, on_note=lambda m: None,
                        on_done=lambda c, r: done.append(r))  # fmt: skip
    assert len(results) == 4 and all(r.get("error") is None and np.isfinite(r["score"]) for r in results)
    assert [r.get("packed_with") for r in done] == [4] * 4
    for cell in cells:  # every cell: a run directory of its own, trained with its own seed and nu
        run = tmp_path / "sw" / "cells" / cell.dirname / "run"
        config = json.loads((run / "config.json").read_text())["config"]
        assert (config["seed"], config["nu"]) == (cell.config["seed"], cell.config["nu"])


def test_an_interrupted_packed_job_resumes_as_one_job_and_a_started_cell_never_joins_a_fresh_one(tmp_path):
    from omgmg.datakit.checkpoints import save_checkpoint

    raw = spec_dict(make_fixture(tmp_path / "d.zarr", "continuous", episodes=4), algorithms=["omgmg"],
                    layout="ablation", grid={"nu": [1.0, 10.0]}, seeds=[0, 1, 2],
                    overrides={"omgmg": {"hidden": 16}})  # fmt: skip
    cells = parse_spec(raw).cells()  # 3 seeds x 2 values of nu: one job of 6 when none has started

    def checkpoint(cell, step):
        run = tmp_path / "sw" / "cells" / cell.dirname / "run" / "checkpoints"
        run.mkdir(parents=True, exist_ok=True)
        if step is None:  # damaged
            (run / "latest.pt").write_bytes(b"not a checkpoint")
        else:
            save_checkpoint({"step": step}, run / "latest.pt")

    def jobs():
        return sorted(sorted(c.dirname for c in job) for job in pack_cells(cells, tmp_path / "sw", members_per_job=6))

    assert [len(j) for j in jobs()] == [6]
    for c in cells[:4]:  # a job of four stopped after its checkpoint at step 5000
        checkpoint(c, 5000)
    assert sorted(len(j) for j in jobs()) == [2, 4]  # the four resume together; the two unstarted start together
    checkpoint(cells[3], 10000)  # one member saved a later step before the job stopped
    assert sorted(len(j) for j in jobs()) == [1, 2, 3]
    checkpoint(cells[0], None)  # a damaged checkpoint: that cell alone, where its run says what is wrong
    assert sorted(len(j) for j in jobs()) == [1, 1, 2, 2]
    assert [cells[0].dirname] in jobs()


@pytest.mark.slow
def test_cells_train_while_the_next_source_is_generated_and_finished_sources_are_not_prepared(tmp_path, monkeypatch):
    """Two dataset sources: the second one's generation (here: waiting) ends only once the first one's cells
    have finished in the pool. A sweep that generated everything before training would wait forever."""
    from omgmg.experiments import sweep as sweep_module

    first = make_fixture(tmp_path / "a.zarr", "continuous", episodes=12)
    second = make_fixture(tmp_path / "b.zarr", "continuous", episodes=12)
    raw = spec_dict(first, algorithms=["bc"], seeds=[0], overrides={"bc": {"hidden": 16}})
    raw["datasets"] = [{"path": str(first.path), "label": "a"}, {"path": str(second.path), "label": "b"}]
    spec = parse_spec(raw)
    a_cell = next(c for c in spec.cells() if c.dataset.label == "a")
    prepare = sweep_module.prepare_datasets
    seen = []

    def slow_second_source(cells, data, workers, on_note):
        if cells and cells[0].dataset.label == "b":
            deadline = time.time() + 120
            while not (tmp_path / "sw" / "cells" / a_cell.dirname / "result.json").exists():
                assert time.time() < deadline, "the first source's cell did not train while the second generated"
                time.sleep(0.1)
        seen.append(sorted({c.dataset.label for c in cells}))
        return prepare(cells, data, workers, on_note)

    monkeypatch.setattr(sweep_module, "prepare_datasets", slow_second_source)
    done = []
    results = run_sweep(spec, tmp_path / "sw", workers=2, threads=1, on_note=lambda m: None,
                        on_done=lambda c, r: done.append(c.dataset.label))  # fmt: skip
    assert sorted(done) == ["a", "b"] and all(r.get("error") is None for r in results)
    assert ["a"] in seen and ["b"] in seen
    seen.clear()  # every cell finished: a rerun prepares no source (generated data could have gone)
    run_sweep(spec, tmp_path / "sw", workers=2, threads=1, on_note=lambda m: None)
    assert seen == [[]]  # only the up-front check of the given paths of unfinished cells: none


@pytest.mark.slow
def test_a_pool_sweep_stops_at_the_first_failure_instead_of_running_every_cell(dataset, tmp_path):
    """Quick cells first, then cells of 200k steps: the first quick result fails (here: its caller's
    callback), and the long cells stop at once instead of training to the end."""
    slow = make_fixture(tmp_path / "slow.zarr", "continuous", episodes=12)
    raw = spec_dict(dataset, algorithms=["bc"], overrides={"bc": {"hidden": 16}})
    raw["datasets"] = [{"path": str(dataset.path), "label": "quick"},
                       {"path": str(slow.path), "label": "slow", "steps": 200_000}]  # fmt: skip
    spec = parse_spec(raw)

    class Stop(Exception):
        pass

    def stop(cell, result):
        raise Stop

    with pytest.raises(Stop):
        run_sweep(spec, tmp_path / "sw", workers=2, threads=1, on_done=stop, on_note=lambda m: None)
    pending = pending_cells(tmp_path / "sw", spec.cells())
    labels = [c.dataset.label for c in pending]
    assert labels.count("slow") == 2 and len(labels) <= 3  # one quick cell failed; the other may have finished


# ----- reports ------------------------------------------------------------------------------------------------------


def _fake_result(
    root,
    name,
    algorithm,
    seed,
    score,
    q,
    grid=None,
    diverged=False,
    task="Hopper-3x1",
    win=None,
    best=None,
    steps=5,
    refs=None,
    mechanism=None,
):
    d = root / "cells" / name
    d.mkdir(parents=True, exist_ok=True)
    suite = "smacv2" if "_" in task else "mamujoco"
    cell = {
        "algorithm": algorithm,
        "seed": seed,
        "grid": grid,
        "config": {"steps": steps},
        "data": {"transitions": 10},
        "dataset": {"suite": suite, "task": task, "level": "medium", "path": None, "label": None},
    }
    result = {"key": name, "cell": cell, "score": score, "q_tot": q, "diverged": diverged, "win_rate": win,
              "best_score": best}  # fmt: skip
    result["best_win_rate"] = best if win is not None else None
    if refs:
        result["reference_returns"] = refs
    if mechanism:
        result["mechanism"] = mechanism
    (d / "result.json").write_text(json.dumps(result))


def test_report_aggregates_mean_and_std_by_hand_and_bolds_the_best(tmp_path):
    root = tmp_path / "sw"
    meta = {
        "name": "t",
        "title": "T",
        "layout": "table",
        "smoke": True,
        "seeds": [0, 1, 2],
        "budget": {"steps": 5, "eval_every": 5, "eval_episodes": 1},
        "data": {},
        "algorithms": ["bc", "omgmg"],
        "grid": None,
    }
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps(meta))
    for s, (x, y) in enumerate([(100.0, 300.0), (200.0, 330.0), (300.0, 360.0)]):
        _fake_result(root, f"bc{s}", "bc", s, x, None)
        _fake_result(root, f"om{s}", "omgmg", s, y, 50.0, diverged=s == 0)
    agg = aggregate(load_results(root)[1])
    bc, om = agg[("Hopper-3x1", "medium", "bc", None)], agg[("Hopper-3x1", "medium", "omgmg", None)]
    assert bc["mean"] == pytest.approx(200.0) and bc["std"] == pytest.approx(np.sqrt(20000 / 3))
    assert om["mean"] == pytest.approx(330.0) and om["diverged"] == 1
    md = write_report(root)[0].read_text()
    assert "**330.0 ± 24.5 ×1**" in md and "| 200.0 ± 81.6 |" in md and "SMOKE budget" in md
    assert normalised(150.0, 100.0, 200.0) == 50.0
    assert normalised(39.0, 18.0, 18.5) is None  # references too close to mean anything
    assert "normalised" not in bc  # no reference datasets and none recorded
    assert "Not the paper's benchmark: MaMuJoCo runs on gymnasium-robotics v5" in md and "SMAX" not in md


def test_a_reports_budget_line_names_a_dataset_that_ran_its_own_budget(tmp_path):
    """SMAX cells of a spec run 20k steps and 128 evaluation episodes against the spec's 50k and 32: the
    header said 50k and 32 for every row."""
    root = tmp_path / "sw"
    budget = {"steps": 50000, "eval_every": 5000, "eval_episodes": 32}
    meta = {"name": "t", "title": "T", "layout": "table", "smoke": False, "seeds": [0], "data": {},
            "budget": budget, "algorithms": ["bc"], "grid": None}  # fmt: skip
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps(meta))
    _fake_result(root, "hop", "bc", 0, 1000.0, None, steps=50000)
    _fake_result(root, "smax", "bc", 0, 0.4, None, task="protoss_5v5", win=0.4, steps=20000)
    cell = root / "cells" / "smax" / "result.json"
    result = json.loads(cell.read_text())
    result["cell"]["config"]["eval_episodes"] = 128
    cell.write_text(json.dumps(result))
    md = write_report(root)[0].read_text()
    assert "full budget: 50000 gradient steps, 1 seed(s), 32 evaluation episodes" in md
    assert "; protoss_5v5: 20000 gradient steps, 128 evaluation episodes_" in md
    assert "Hopper-3x1:" not in md  # it ran the spec's budget


def test_a_report_normalises_with_the_references_its_cells_recorded_when_the_data_is_gone(tmp_path):
    root = tmp_path / "sw"
    budget = {"steps": 5, "eval_every": 5, "eval_episodes": 1}
    meta = {"name": "t", "title": "T", "layout": "table", "smoke": False, "seeds": [0, 1], "data": {},
            "budget": budget, "algorithms": ["bc"], "grid": None}  # fmt: skip
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps(meta))
    for s, x in [(0, 150.0), (1, 250.0)]:
        _fake_result(root, f"bc{s}", "bc", s, x, None, refs={"random": 100.0, "expert": 300.0})
    agg = aggregate(load_results(root)[1])
    assert agg[("Hopper-3x1", "medium", "bc", None)]["normalised"][0] == pytest.approx(50.0)


def test_results_carry_their_evaluations_so_curves_need_no_run_logs(dataset, tmp_path):
    """Committed results (result.json alone) still draw the learning curves."""
    import shutil

    budget = {"steps": 20, "eval_every": 10, "eval_episodes": 1}
    spec = parse_spec(spec_dict(dataset, algorithms=["bc"], seeds=[0], budget=budget, overrides={"bc": {"hidden": 16}}))
    (result,) = run_sweep(spec, tmp_path / "sw", workers=1, on_note=lambda m: None)
    assert [e["step"] for e in result["evals"]] == [10, 20] and result["evals"][-1]["return"] == result["score"]
    for run in (tmp_path / "sw" / "cells").glob("*/run"):
        shutil.rmtree(run)
    assert (tmp_path / "sw" / "tiny-curves.png") in write_report(tmp_path / "sw")


def test_a_sweep_split_with_only_merges_into_one_results_only_directory_that_reports_and_resumes(dataset, tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(bc_sweep_toml(dataset.path, steps=20, eval_every=10))
    sweep = ["sweep", str(spec), "--workers", "1", "--torch-threads", "1"]
    for part, pattern in (("a", "*-seed0-*"), ("b", "dataset/*-seed1-*")):  # two machines, one seed each
        ran = CliRunner().invoke(train_cli, [*sweep, "--out", str(tmp_path / part), "--only", pattern])
        assert ran.exit_code == 0 and "1 cells finished" in ran.output, ran.output
        assert "Unfinished: 1 of 2 cells" in (tmp_path / part / "tiny.md").read_text()
    listed = CliRunner().invoke(train_cli, [*sweep, "--out", str(tmp_path / "a"), "--list", "--only", "seed1"])
    assert "todo  dataset/fixture-bc-seed1-" in listed.output and "1 cells, 0 finished" in listed.output

    merged = tmp_path / "docs" / "tiny"
    for part in ("a", "b"):
        export = ["report", str(tmp_path / part), "--out", str(merged), "--with-results"]
        exported = CliRunner().invoke(train_cli, export)
        assert exported.exit_code == 0 and "1 results copied" in exported.output, exported.output
    assert "Unfinished" not in (merged / "tiny.md").read_text() and (merged / "tiny-curves.png").exists()
    meta = json.loads((tmp_path / "b" / "sweep.json").read_text())  # the sweep run again by a newer omgmg
    (tmp_path / "b" / "sweep.json").write_text(json.dumps(meta | {"title": "Tiny, rerun"}))
    assert (
        CliRunner().invoke(train_cli, ["report", str(tmp_path / "b"), "--out", str(merged), "--with-results"]).exit_code
        == 0
    )
    assert json.loads((merged / "sweep.json").read_text())["title"] == "Tiny, rerun"  # the same cells: the newer record
    assert sorted(p.name for p in merged.rglob("*") if p.is_file()) == [
        "result.json", "result.json", "sweep.json", "tiny-curves.png", "tiny.csv", "tiny.md"]  # fmt: skip
    for part in ("a", "b"):  # the results themselves, unchanged
        (source,) = (tmp_path / part / "cells").glob("*/result.json")
        assert json.loads((merged / "cells" / source.parent.name / "result.json").read_text()) == json.loads(
            source.read_text()
        )
    _, results = load_results(merged)
    assert sorted(r["cell"]["seed"] for r in results) == [0, 1]
    marl = CliRunner().invoke(train_cli, ["report", str(merged), "--marl-eval"])  # from the recorded evaluations
    assert marl.exit_code == 0, marl.output
    runs = json.loads((merged / "tiny.marl-eval.json").read_text())["dataset"]["fixture"]["bc"]
    assert sorted(runs) == ["run_0", "run_1"] and runs["run_0"]["step_1"]["step_count"] == 20

    import shutil

    shutil.copytree(merged, tmp_path / "continued")  # a copy continues: nothing left to train
    again = []
    run_sweep(load_spec(str(spec)), tmp_path / "continued", workers=1, on_done=lambda c, r: again.append(c),
              on_note=lambda m: None)  # fmt: skip
    assert again == []


def _knob_toml(dataset_path, name: str, knob: str, values: list[float]) -> str:
    """A one-seed OMGMG ablation over one knob, 10 steps (the shape of the select-clean-* specs)."""
    return bc_sweep_toml(dataset_path, steps=10, eval_every=10, name=name, algorithms=("omgmg",), seeds=(0,),
                         grid={knob: values}, small="omgmg")  # fmt: skip


def test_a_sweep_reuses_another_sweeps_results_for_the_same_cells_and_trains_only_the_rest(dataset, tmp_path):
    # the next knob's selection holds the previous one's default point: the same cells, trained once
    alpha = tmp_path / "alpha.toml"
    alpha.write_text(_knob_toml(dataset.path, "tiny-alpha", "alpha", [10.0, 1.0]))  # 10: OMGMG's default alpha
    nu_default = load_spec(str(alpha)).cells()[0].config["nu"]
    nu = tmp_path / "nu.toml"
    nu.write_text(_knob_toml(dataset.path, "tiny-nu", "nu", [nu_default, nu_default + 2.5]))
    sweep = ["--workers", "1", "--torch-threads", "1"]
    first = CliRunner().invoke(train_cli, ["sweep", str(nu), "--out", str(tmp_path / "nu"), *sweep])
    assert first.exit_code == 0 and "2 cells finished" in first.output, first.output

    listed = CliRunner().invoke(train_cli, ["sweep", str(alpha), "--out", str(tmp_path / "alpha"), "--list",
                                            "--reuse", str(tmp_path / "nu")])  # fmt: skip
    assert "reuse dataset/fixture-omgmg-alpha10-seed0-" in listed.output
    assert "todo  dataset/fixture-omgmg-alpha1-seed0-" in listed.output
    assert "2 cells, 0 finished, 1 taken from other sweeps" in listed.output
    trained = []
    results = run_sweep(load_spec(str(alpha)), tmp_path / "alpha", workers=1, reuse=[tmp_path / "nu"],
                        on_done=lambda c, r: trained.append(c.grid), on_note=lambda m: None)  # fmt: skip
    assert trained == [("alpha", 1.0)]  # the default point was not trained again
    (reused,) = [r for r in results if r.get("reused_from")]
    (source,) = [r for r in load_results(tmp_path / "nu")[1] if r["cell"]["grid"] == ["nu", nu_default]]
    assert reused["cell"]["grid"] == ["alpha", 10.0] and reused["key"] == source["key"]  # its own label, one key
    assert reused["score"] == source["score"] and reused["reused_from"]["sweep"] == "tiny-nu"
    assert not (tmp_path / "alpha" / "cells" / Cell.from_json(reused["cell"]).dirname / "run").exists()
    assert (tmp_path / "alpha" / "cells" / Cell.from_json(reused["cell"]).dirname / "result.json").exists()
    write_report(tmp_path / "alpha")
    report = (tmp_path / "alpha" / "tiny-alpha.md").read_text()
    assert "taken from other sweeps: 1 from tiny-nu" in report

    # a result whose description was edited (it no longer hashes to its key) is never taken; bad sources are refused
    import shutil

    shutil.copytree(tmp_path / "nu", tmp_path / "edited")
    for path in (tmp_path / "edited" / "cells").glob("*/result.json"):
        result = json.loads(path.read_text())
        path.write_text(
            json.dumps(result | {"cell": result["cell"] | {"config": result["cell"]["config"] | {"lr": 1.0}}})
        )
    edited = CliRunner().invoke(train_cli, ["sweep", str(alpha), "--out", str(tmp_path / "fresh"), "--list",
                                            "--reuse", str(tmp_path / "edited")])  # fmt: skip
    assert "2 cells, 0 finished" in edited.output and "reuse" not in edited.output.replace("--reuse", "")
    for source, message in ((tmp_path, "not a sweep's directory (no sweep.json)"),
                            (tmp_path / "fresh", "this sweep's own directory"),
                            ("s3://bucket/sweeps/tiny-nu", "name a sweep directory on this machine")):  # fmt: skip
        refused = CliRunner().invoke(train_cli, ["sweep", str(alpha), "--out", str(tmp_path / "fresh"),
                                                 "--reuse", str(source), *sweep])  # fmt: skip
        assert refused.exit_code == 2 and message in refused.output, refused.output
    assert not (tmp_path / "fresh").exists()  # refused before anything was written


def test_a_result_trained_on_other_data_is_not_reused_though_its_cell_has_the_same_key(dataset, tmp_path):
    # a cell's key names its data by how it is made: the same request on another machine makes other data
    alpha = tmp_path / "alpha.toml"
    alpha.write_text(_knob_toml(dataset.path, "tiny-alpha", "alpha", [10.0, 1.0]))
    nu_default = load_spec(str(alpha)).cells()[0].config["nu"]
    nu = tmp_path / "nu.toml"
    nu.write_text(_knob_toml(dataset.path, "tiny-nu", "nu", [nu_default]))
    run_sweep(load_spec(str(nu)), tmp_path / "nu", workers=1, on_note=lambda m: None)
    (path,) = (tmp_path / "nu" / "cells").glob("*/result.json")
    trained = json.loads(path.read_text())
    assert trained["dataset_content"] == dataset.content_sha256()  # what the check compares

    import shutil

    def offer(name: str, **change) -> Path:
        """A copy of the nu sweep whose one result is changed as another machine's or an older omgmg's would be."""
        shutil.copytree(tmp_path / "nu", tmp_path / name)
        (copy,) = (tmp_path / name / "cells").glob("*/result.json")
        copy.write_text(json.dumps({k: v for k, v in (trained | change).items() if v is not None}))
        return tmp_path / name

    elsewhere = offer("elsewhere", dataset_content="0" * 64)
    older_same = offer("older-same", dataset_content=None)  # before omgmg recorded it: judged by the statistics
    older_other = offer("older-other", dataset_content=None,
                        dataset_stats=trained["dataset_stats"] | {"transitions": 1})  # fmt: skip
    for source, taken in ((elsewhere, False), (older_same, True), (older_other, False)):
        out = tmp_path / f"alpha-from-{source.name}"
        listed = CliRunner().invoke(train_cli, ["sweep", str(alpha), "--out", str(out), "--list", "--reuse",
                                                str(source)])  # fmt: skip
        assert listed.exit_code == 0, listed.output
        assert ("reuse dataset/fixture-omgmg-alpha10-seed0-" in listed.output) == taken, listed.output
        assert ("trained on other data than this machine's" in listed.output) != taken
        notes, ran = [], []
        run_sweep(load_spec(str(alpha)), out, workers=1, reuse=[source], on_note=notes.append,
                  on_done=lambda c, r, ran=ran: ran.append(c.grid))  # fmt: skip
        assert sorted(ran) == ([("alpha", 1.0)] if taken else [("alpha", 1.0), ("alpha", 10.0)])
        refused = [n for n in notes if "not taken: trained on other data than" in n]
        assert len(refused) == (0 if taken else 1) and (taken or str(dataset.path) in refused[0]), notes

    # a report says what data its results were trained on, and where one dataset's results mix two
    write_report(tmp_path / "alpha-from-elsewhere")
    report = (tmp_path / "alpha-from-elsewhere" / "tiny-alpha.md").read_text()
    assert (
        f"Data fixture: {dataset.meta['stats']['episodes']} episodes" in report and "different datasets" not in report
    )
    (one, _) = sorted((tmp_path / "alpha-from-elsewhere" / "cells").glob("*/result.json"))
    one.write_text(json.dumps(json.loads(one.read_text()) | {"dataset_content": "1" * 64}))  # a part made elsewhere
    write_report(tmp_path / "alpha-from-elsewhere")
    report = (tmp_path / "alpha-from-elsewhere" / "tiny-alpha.md").read_text()
    assert "fixture: its results come from 2 different datasets, not comparable" in report


def test_only_patterns_and_result_exports_refuse_what_they_cannot_do(dataset, tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(bc_sweep_toml(dataset.path, steps=10, eval_every=10))
    nothing = CliRunner().invoke(train_cli, ["sweep", str(spec), "--out", str(tmp_path / "sw"), "--only", "smacv2/*"])
    assert nothing.exit_code == 2 and "matches none of the spec's 2 cells" in nothing.output
    assert "dataset/*" in nothing.output and not (tmp_path / "sw").exists()  # nothing written
    smoke = ["sweep", str(spec), "--smoke", "--out", str(tmp_path / "sw"), "--workers", "1"]
    ran = CliRunner().invoke(train_cli, smoke)
    assert ran.exit_code == 0, ran.output
    no_out = CliRunner().invoke(train_cli, ["report", str(tmp_path / "sw"), "--with-results"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    itself = CliRunner().invoke(train_cli, ["report", str(tmp_path / "sw"), "--out", str(tmp_path / "sw"),
                                            "--with-results"])  # fmt: skip
    assert itself.exit_code == 2 and "the sweep directory itself" in itself.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "sweep.json").write_text(json.dumps({"name": "table1", "smoke": False}))
    refused = CliRunner().invoke(train_cli, ["report", str(tmp_path / "sw"), "--out", str(other), "--with-results"])
    assert refused.exit_code == 2 and "holds the results of sweep 'table1', not of 'tiny' (smoke)" in refused.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "sweep.json").write_text("not ours")
    refused = CliRunner().invoke(train_cli, ["report", str(tmp_path / "sw"), "--out", str(foreign), "--with-results"])
    assert refused.exit_code == 2 and "is not an omgmg sweep's" in refused.output
    assert (foreign / "sweep.json").read_text() == "not ours" and sorted(p.name for p in foreign.iterdir()) == [
        "sweep.json"
    ]  # untouched
    assert json.loads((other / "sweep.json").read_text())["name"] == "table1" and not (other / "cells").exists()
    (other / "sweep.json").write_text(json.dumps({"name": "tiny", "smoke": True, "cells": ["an-edited-cell"]}))
    edited = CliRunner().invoke(train_cli, ["report", str(tmp_path / "sw"), "--out", str(other), "--with-results"])
    assert edited.exit_code == 2 and "another version of sweep 'tiny' (1 of its cells" in edited.output
    assert not (other / "cells").exists()
    (result,) = (tmp_path / "sw" / "cells").glob("*/result.json")
    result.write_text(result.read_text()[:40])  # damaged: cut short
    damaged = CliRunner().invoke(train_cli, ["report", str(tmp_path / "sw"), "--out", str(tmp_path / "new"),
                                             "--with-results"])  # fmt: skip
    assert damaged.exit_code == 1 and f"{result} is damaged" in damaged.output and "Traceback" not in damaged.output
    assert not (tmp_path / "new").exists()


def test_report_shows_best_beside_final_names_its_benchmark_and_per_dataset_budgets(tmp_path):
    root = tmp_path / "pc"
    meta = {
        "name": "pc", "title": "P", "layout": "table", "smoke": False, "seeds": [0, 1],
        "budget": {"steps": 50_000, "eval_every": 5, "eval_episodes": 1}, "data": {}, "algorithms": ["omgmg"],
        "grid": None,
    }  # fmt: skip
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps(meta))
    for s in (0, 1):
        _fake_result(root, f"h{s}", "omgmg", s, 100.0 + s, 1.0, best=200.0 + s, steps=50_000)
        _fake_result(root, f"p{s}", "omgmg", s, 0.5, 1.0, task="protoss_5v5", win=0.5, best=0.9, steps=20_000)
    md = write_report(root)[0].read_text()
    assert "100.5 ± 0.5 [200.5]" in md  # the best (selected on evaluation returns) beside, not instead
    assert "| protoss_5v5 | medium (20,000 steps) | 50.0 ± 0.0 [90.0] |" in md  # its own budget, win rates in %
    assert "**" not in md  # one algorithm: nothing to be best against
    (root / "cells" / "p1" / "result.json").unlink()
    md = write_report(root)[0].read_text()
    assert "| 50.0 ± 0.0 (1 of 2 seeds) [90.0] |" in md  # a row missing seeds says so
    assert "Unfinished" not in md  # a sweep.json without its cells' list (older sweeps): nothing to count
    (root / "sweep.json").write_text(json.dumps(meta | {"cells": ["h0", "h1", "p0", "p1"]}))
    md = write_report(root)[0].read_text()
    assert "_Unfinished: 3 of 4 cells have a result; run the sweep again to train the rest._" in md
    assert "SMACv2 tasks run on JaxMARL's SMAX" in md and "gymnasium-robotics v5" in md


def test_ablation_report_draws_score_and_q_against_the_grid(tmp_path):
    root = tmp_path / "ab"
    meta = {
        "name": "ab",
        "title": "A",
        "layout": "ablation",
        "smoke": False,
        "seeds": [0],
        "budget": {"steps": 5, "eval_every": 5, "eval_episodes": 1},
        "data": {},
        "algorithms": ["omgmg"],
        "grid": "lam",
    }
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps(meta))
    for i, lam in enumerate([0.0, 0.5, 1.0]):
        _fake_result(root, f"c{i}", "omgmg", 0, 10.0 * i, 100.0 * i, grid=["lam", lam], diverged=lam == 1.0)
    paths = write_report(root)
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    md = paths[0].read_text()
    assert "| Hopper-3x1 | medium | omgmg | 1 | 20.0 ± 0.0 | 200.0 ± 0.0 | 1/1 |" in md


def test_an_ablation_of_runs_that_logged_the_mechanism_draws_it_against_the_grid(tmp_path):
    from omgmg.experiments.sweep import mechanism

    log = [{"step": s, "policy/action_distance": 0.1 * s, "value/q_tot": 1.0} for s in range(1, 21)]
    assert mechanism(log) == {"policy/action_distance": pytest.approx(1.55)}  # steps 11-20: the last ten
    assert mechanism([{"step": 1, "value/q_tot": 1.0}]) == {}  # BC logs none
    root = tmp_path / "ab"
    root.mkdir()
    meta = {"name": "ab", "title": "A", "layout": "ablation", "smoke": False, "seeds": [0, 1],
            "budget": {"steps": 5, "eval_every": 5, "eval_episodes": 1}, "data": {}, "algorithms": ["omgmg"],
            "grid": "lam"}  # fmt: skip
    (root / "sweep.json").write_text(json.dumps(meta))
    for i, lam in enumerate([0.0, 1.0]):
        for seed, distance in ((0, 0.1 + 0.2 * lam), (1, 0.2 + 0.2 * lam)):
            _fake_result(root, f"c{i}{seed}", "omgmg", seed, 10.0, 1.0, grid=["lam", lam],
                         mechanism={"policy/action_distance": distance})  # fmt: skip
            _fake_result(root, f"s{i}{seed}", "omgmg", seed, 10.0, 1.0, grid=["lam", lam], task="protoss_5v5",
                         win=0.5, mechanism={"policy/action_differs": distance / 2})  # fmt: skip
    md_path, csv_path, png = write_report(root)[:3]
    md = md_path.read_text()  # each suite's own metric: the distance on MaMuJoCo, the share that differs on SMAX
    assert "| Hopper-3x1 | medium | omgmg | 1 | 10.0 ± 0.0 | 1.0 ± 0.0 | 0.350 ± 0.050 (RMS / range) | 0/2 |" in md
    assert "| protoss_5v5 | medium | omgmg | 1 | 50.0 ± 0.0 | 1.0 ± 0.0 | 0.175 ± 0.025 (share a' != a) | 0/2 |" in md
    assert csv_path.read_text().splitlines()[0].endswith("off_data_metric,off_data_mean,off_data_std,diverged,n")
    height = int.from_bytes(png.read_bytes()[20:24], "big")  # the PNG header's height: three rows of panels
    assert height == 900


def test_a_selection_reports_the_rules_pick_against_the_default_it_ran_with(tmp_path):
    root = tmp_path / "sel"
    root.mkdir()
    meta = {"name": "sel", "title": "S", "layout": "selection", "smoke": False, "seeds": [0, 1, 2],
            "budget": {"steps": 5, "eval_every": 5, "eval_episodes": 1}, "data": {}, "algorithms": ["omgmg"],
            "grid": "nu", "defaults": {"mamujoco": 1.0, "smacv2": 1.0}}  # fmt: skip
    (root / "sweep.json").write_text(json.dumps(meta))
    refs = {"random": 0.0, "expert": 1000.0}  # normalised = return / 10
    # MaMuJoCo: two tasks; nu = 10 scores 70, 72, 74 per seed (the mean of the tasks), the default nu = 1 50 each
    hopper = {0.1: (100, 100, 100), 1.0: (480, 500, 520), 10.0: (690, 710, 730)}
    cheetah = {0.1: (100, 100, 100), 1.0: (520, 500, 480), 10.0: (710, 730, 750)}
    for nu in hopper:
        for seed in range(3):
            for task, scores in (("Hopper-3x1", hopper), ("HalfCheetah-6x1", cheetah)):
                _fake_result(root, f"{task}{nu}{seed}", "omgmg", seed, scores[nu][seed], 1.0, grid=["nu", nu],
                             task=task, refs=refs)  # fmt: skip
    # SMACv2: nu = 10 wins 52, 50, 48%, the default 50, 48, 46%: 2 points, 2 / sqrt(4 / 3 + 4 / 3) = 1.22 SE
    for nu, rates in ((0.1, (0.1, 0.1, 0.1)), (1.0, (0.50, 0.48, 0.46)), (10.0, (0.52, 0.50, 0.48))):
        for seed in range(3):
            _fake_result(root, f"smax{nu}{seed}", "omgmg", seed, 10.0, 1.0, grid=["nu", nu], task="protoss_5v5",
                         win=rates[seed])  # fmt: skip
    md = write_report(root)[0].read_text()
    assert "| mamujoco | 10 | 70.0, 72.0, 74.0 | 72.0 ± 1.6 |" in md
    assert "it beats the default 1 by 22.0, 19.05 standard errors: **10 wins**" in md  # 22 / sqrt(4 / 3 + 0 / 3)
    assert "10 is on the grid's edge: extend the grid one step past it and run nu again" in md
    assert (
        "**smacv2**: nu = 10 scores highest (50.0); it beats the default 1 by 2.0, 1.22 standard errors: **10 wins**"
        in md
    )
    # one SMACv2 seed short: no pick
    (root / "cells" / "smax10.02" / "result.json").unlink()
    md = write_report(root)[0].read_text()
    assert "**smacv2**: undecided, nu = 10 lacks seeds" in md and "**10 wins**" in md
    # seed 2 at 46%: 1.33 points ahead, 0.63 standard errors (sqrt(9.33 / 3 + 4 / 3) = 2.11): the default stays
    _fake_result(root, "smax10.02", "omgmg", 2, 10.0, 1.0, grid=["nu", 10.0], task="protoss_5v5", win=0.46)
    md = write_report(root)[0].read_text()
    assert "beats the default 1 by 1.3, 0.63 standard errors: less than one: **the default 1 stays**" in md
    # the sweep's MaMuJoCo suite also holds Ant, with no results yet: the two tasks' scores are no suite score
    meta["suite_datasets"] = {"mamujoco": [["Hopper-3x1", "medium"], ["HalfCheetah-6x1", "medium"],
                                           ["Ant-2x4", "medium"]], "smacv2": [["protoss_5v5", "medium"]]}  # fmt: skip
    (root / "sweep.json").write_text(json.dumps(meta))
    md = write_report(root)[0].read_text()
    assert "| mamujoco | 10 | 70.0, 72.0, 74.0 | 72.0 ± 1.6 |" in md  # shown, and said to be partial
    assert "**mamujoco**: undecided, Ant-2x4/medium has no results yet" in md and "19.05" not in md
    assert "**the default 1 stays**" in md  # SMACv2 has all of its datasets: decided as before


def test_a_selection_sweep_records_the_default_and_the_datasets_its_rule_needs(dataset, tmp_path):
    raw = spec_dict(dataset, algorithms=["omgmg"], layout="selection", grid={"nu": [1.0, 10.0]}, seeds=[0],
                    overrides={"omgmg": {"hidden": 16}})  # fmt: skip
    spec = parse_spec(raw)
    run_sweep(spec, tmp_path / "sw", workers=1, members_per_job=2, on_note=lambda m: None)
    meta = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert meta["defaults"] == spec.knob_defaults() and list(meta["defaults"]) == ["fixture"]  # the data's suite
    assert meta["suite_datasets"] == {"fixture": [["fixture", "-"]]}
    assert "| fixture | - | omgmg | 10 |" in write_report(tmp_path / "sw")[0].read_text()
    # the default then follows a pick (here: the knob's default set to 77) and the sweep resumes: it still holds
    # its grid against the default it began with, not against its own winner
    before = meta["defaults"]["fixture"]
    followed = parse_spec(raw | {"overrides": {"omgmg": {"hidden": 16, "nu": 77.0}}})
    assert [c.key for c in followed.cells()] == [c.key for c in spec.cells()] and followed.knob_defaults() != before
    run_sweep(followed, tmp_path / "sw", workers=1, on_note=lambda m: None)
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["defaults"] == {"fixture": before}
    grown = parse_spec(raw | {"seeds": [0, 1], "overrides": {"omgmg": {"hidden": 16, "nu": 77.0}}})
    run_sweep(grown, tmp_path / "sw", workers=1, members_per_job=4, on_note=lambda m: None)  # other cells: anew
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["defaults"] == {"fixture": 77.0}


def test_sweep_and_report_commands(dataset, tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(bc_sweep_toml(dataset.path, steps=20, eval_every=20))
    out = tmp_path / "sw"
    result = CliRunner().invoke(
        train_cli, ["sweep", str(spec), "--smoke", "--out", str(out), "--workers", "1", "--torch-threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "1 cells finished" in result.output and (out / "tiny.md").exists()
    (run_config,) = out.glob("cells/*/run/config.json")
    assert json.loads(run_config.read_text())["config"]["torch_threads"] == 1
    listed = CliRunner().invoke(train_cli, ["sweep", str(spec), "--smoke", "--out", str(out), "--list"])
    assert "done" in listed.output and "1 cells, 1 finished" in listed.output
    with pytest.MonkeyPatch.context() as m:  # other work keeps both cores busy: told before any cell starts
        from omgmg import machine

        m.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        m.setattr(machine, "other_cpu_load", lambda: 2.0)
        busy = CliRunner().invoke(train_cli, ["sweep", str(spec), "--smoke", "--out", str(out), "--torch-threads", "2"])
    assert busy.exit_code == 0 and "--torch-threads 1" in busy.output, busy.output
    report = CliRunner().invoke(train_cli, ["report", str(out), "--marl-eval"])
    assert report.exit_code == 0 and "fixture" in report.output
    raw = json.loads((out / "tiny.marl-eval.json").read_text())  # marl-eval's layout: env, task, algo, run, step
    run = raw["dataset"]["fixture"]["bc"]["run_0"]
    assert list(run) == ["step_0", "absolute_metrics"]
    assert run["step_0"]["step_count"] == 10 and len(run["step_0"]["return"]) == 1
    assert run["absolute_metrics"] == {"return": run["step_0"]["return"]}
    assert (out / "tiny-curves.png").read_bytes()[:4] == b"\x89PNG" and "tiny-curves.png" in (
        out / "tiny.md"
    ).read_text()
    bad = CliRunner().invoke(train_cli, ["sweep", "table9"])
    assert bad.exit_code == 2 and "no spec file 'table9'" in bad.output
    missing = CliRunner().invoke(train_cli, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "nothing does not exist; give what `omgmg sweep` wrote" in missing.output
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)  # runs two levels down are not looked for
    deep = CliRunner().invoke(train_cli, ["report", str(tmp_path / "deep")])
    assert (
        deep.exit_code == 2 and "deep is neither a sweep directory (no sweep.json) nor a folder of runs" in deep.output
    )


def test_a_spec_asks_for_omigas_layout_and_independent_copies_per_dataset_without_changing_older_cells():
    base = {
        "name": "v", "algorithms": ["bc"], "seeds": [0],
        "budget": {"steps": 10, "eval_every": 10, "eval_episodes": 1},
        "smoke": {"seeds": [0], "steps": 10, "eval_every": 10, "eval_episodes": 1},
    }  # fmt: skip
    plain = parse_spec(base | {"datasets": [{"suite": "mamujoco", "task": "Hopper-3x1", "levels": ["medium"]}]})
    variant = parse_spec(
        base | {"datasets": [{"suite": "mamujoco", "task": "Hopper-3x1", "levels": ["medium"], "obs_mode": "omiga",
                              "rollout_seed": 1}]}
    )  # fmt: skip
    (p,), (v,) = plain.cells(), variant.cells()
    assert "obs_mode" not in p.to_json()["dataset"] and p.key != v.key  # older cells keep their keys
    assert (
        v.dataset.obs_mode == "omiga"
        and v.dataset.rollout_seed == 1
        and v.dataset.row == ("Hopper-3x1-omiga-rollouts1", "medium")
    )
    assert dataset_path(v.dataset, {}).name == "mamujoco-Hopper-3x1-omiga-rollouts1-medium.zarr"
    assert [r.obs_mode for r in reference_levels(v.dataset)] == ["omiga", "omiga"]
    for bad, message in (
        ({"obs_mode": "global"}, "obs_mode is local or omiga"),
        ({"rollout_seed": -1}, "rollout_seed must be a non-negative integer"),
        ({"levels": ["medium-replay"], "rollout_seed": 1}, "has no copy with another rollout_seed"),
    ):
        entry = {"suite": "mamujoco", "task": "Hopper-3x1", "levels": ["medium"]} | bad
        with pytest.raises(SpecError, match=message):
            parse_spec(base | {"datasets": [entry]})
    omiga = {ref.task for ref in load_spec("paper-check").datasets if ref.obs_mode == "omiga"}
    assert omiga == {"Hopper-3x1", "HalfCheetah-6x1"}
    assert {ref.obs_mode for ref in load_spec("table1").datasets if ref.task == "Ant-2x4"} == {None}


def test_aggregate_statistics_follow_rliables_definitions():
    from omgmg.experiments.stats import improvement_interval, interval, iqm, probability_of_improvement

    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])  # 4 runs x 2 tasks
    # 8 values; int(0.25 * 8) = 2 cut at each end: mean of 3, 4, 10, 20
    assert iqm(scores) == pytest.approx((3 + 4 + 10 + 20) / 4)
    lo, hi = interval(scores, iqm, reps=500)
    assert lo <= iqm(scores) <= hi and lo < hi
    constant = np.full((3, 2), 5.0)
    assert interval(constant, iqm, reps=50) == (5.0, 5.0)  # nothing to resample
    x, y = np.array([[1.0], [3.0]]), np.array([[2.0], [2.0]])
    assert probability_of_improvement(x, y) == pytest.approx(0.5)  # 3 > 2 twice, 1 < 2 twice: 2 of 4
    assert probability_of_improvement(y, y) == pytest.approx(0.5)  # ties count half
    two_tasks = probability_of_improvement(np.array([[5.0, 0.0]]), np.array([[1.0, 1.0]]))
    assert two_tasks == pytest.approx(0.5)  # 1 on the first task, 0 on the second, averaged
    lo, hi = improvement_interval(np.array([[3.0], [4.0], [5.0]]), np.array([[1.0], [2.0], [0.0]]), reps=200)
    assert lo == hi == 1.0  # every resample: X always above Y


def test_list_with_rates_estimates_the_unfinished_jobs_device_hours(dataset, tmp_path):
    """The cost model: each job of M cells costs steps / (measured steps/s of an M-member program)."""
    row = {"task_shape": "continuous", "algorithm": "bc", "device": "cpu"}
    rows = [
        {**row, "members": 1, "mode": "eager", "steps_per_s": 100.0},
        {**row, "members": 2, "mode": "eager", "steps_per_s": 150.0},
        {**row, "members": 1, "mode": "compiled", "steps_per_s": 1.0},  # another mode: not used by an eager sweep
    ]
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps(rows))
    spec = tmp_path / "cost.toml"
    spec.write_text(
        bc_sweep_toml(dataset.path, steps=3600, eval_every=3600, algorithms=["bc", "omgmg"], seeds=[0, 1, 2])
    )
    args = ["sweep", str(spec), "--out", str(tmp_path / "sw"), "--list", "--rates", str(rates)]
    listed = CliRunner().invoke(train_cli, [*args, "--members-per-job", "2"])
    assert listed.exit_code == 0, listed.output
    # bc: seeds 0+1 as one 2-member job (3600 / 150 s) and seed 2 alone (3600 / 100 s) = 60 s = 0.0167 h
    assert "to train: 3 cells as 2 jobs, 10,800 member-steps left" in listed.output
    assert "  0.0167 device-hours at the speeds in" in listed.output
    assert "resumes at" not in listed.output
    assert "not counted: omgmg on continuous" in listed.output  # no row for it: said, not guessed
    alone = CliRunner().invoke(train_cli, [*args, "--members-per-job", "3"])
    # the nearest measured M stands in, named, on the slow side: 3600 steps at 150 x 2/3 steps/s = 36 s
    assert "M = 2 for jobs of 3 (bc, continuous; an upper bound)" in alone.output
    assert "  0.01 device-hours" in alone.output
    wrong = CliRunner().invoke(train_cli, [*args[:-1], str(spec)])
    assert wrong.exit_code == 2 and "not a `benchmarks/train.py --members` result" in wrong.output
    # BC's seeds 0 and 1 were interrupted after their checkpoints at step 2400: they cost the 1200 steps left
    from omgmg.datakit.checkpoints import save_checkpoint

    bc_cells = [c for c in load_spec(spec).cells() if c.algorithm == "bc"]
    for cell in bc_cells[:2]:
        (checkpoints := tmp_path / "sw" / "cells" / cell.dirname / "run" / "checkpoints").mkdir(parents=True)
        save_checkpoint({"step": 2400}, checkpoints / "latest.pt")
    resumed = CliRunner().invoke(train_cli, [*args, "--members-per-job", "2"])
    assert resumed.output.count("(resumes at step 2,400 of 3,600)") == 2
    # 1200 / 150 s for the resumed pair, 3600 / 100 s for seed 2: 44 s
    assert "3 cells as 2 jobs, 6,000 member-steps left" in resumed.output and "0.0122 device-hours" in resumed.output


def test_a_packed_sweeps_progress_counts_the_steps_its_cells_have_trained(dataset, tmp_path, monkeypatch):
    """Two seeds train as one job and finish together: the count moves while they train (a share of each
    cell), so its rate and ETA follow the steps, not the size of the job."""
    import re

    spec = tmp_path / "packed.toml"
    spec.write_text(bc_sweep_toml(dataset.path, steps=300, eval_every=300))
    monkeypatch.setenv("OMGMG_PROGRESS_INTERVAL", "0.05")
    args = ["sweep", str(spec), "--out", str(tmp_path / "sw"), "--members-per-job", "2", "--workers", "1"]
    run = CliRunner().invoke(train_cli, args)
    assert run.exit_code == 0, run.output
    counts = [float(n) for n in re.findall(r"sweep tiny: ([\d.]+)/2 ", run.output)]
    assert any(0 < n < 2 and not n.is_integer() for n in counts), run.output  # part-way through the one job
    assert counts == sorted(counts) and counts[-1] == 2

    # cells that resume part-way are counted as trained that far from the start, not as speed on the way
    from omgmg.datakit.checkpoints import save_checkpoint

    class Started(Exception):
        pass

    def on_start(total, finished, started):
        raise Started(total, finished, started)

    cells = load_spec(spec).cells()
    (checkpoints := tmp_path / "sw2" / "cells" / cells[0].dirname / "run" / "checkpoints").mkdir(parents=True)
    save_checkpoint({"step": 75}, checkpoints / "latest.pt")
    with pytest.raises(Started) as told:
        run_sweep(load_spec(spec), tmp_path / "sw2", workers=1, on_note=lambda m: None, on_start=on_start)
    assert told.value.args == (2, 0, {cells[0].key: 0.25})


def test_a_clusters_lease_period_is_a_setting_checked_before_anything_runs(dataset, tmp_path, monkeypatch):
    from omgmg.experiments import store
    from omgmg.experiments.sweep import SweepError

    assert store.lease_seconds() == store.LEASE_SECONDS
    monkeypatch.setenv("OMGMG_LEASE_SECONDS", "7.5")
    assert store.lease_seconds() == 7.5
    spec = parse_spec(spec_dict(dataset))
    for bad in ("abc", "1", "inf", "nan"):
        monkeypatch.setenv("OMGMG_LEASE_SECONDS", bad)
        with pytest.raises(SweepError, match=f"OMGMG_LEASE_SECONDS='{bad}' is not a number of seconds of at least 2"):
            run_sweep(spec, "s3://bucket/sweeps/x", on_note=lambda m: None)  # before the store is touched
