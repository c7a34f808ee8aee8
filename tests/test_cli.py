"""The command-line tools through click's CliRunner: outputs, exit codes, and no tracebacks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from test_omiga import omiga_file

from omgmg.cli.data import main as data_cli
from omgmg.cli.train import main as train_cli

CARD_KEYS = {
    "format_version",
    "suite",
    "task",
    "level",
    "n_agents",
    "n_episodes",
    "n_transitions",
    "return_mean",
    "return_std",
    "return_min",
    "return_max",
}


def run(cli, *args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    if code:  # errors are reported, never raised as a traceback
        assert isinstance(result.exception, SystemExit), result.exception
    return result


def test_fixture_validate_inspect(tmp_path):
    out = tmp_path / "d.zarr"
    run(data_cli, "fixture", out, "--shape", "discrete", "--episodes", 12, "--seed", 3)
    assert "valid" in run(data_cli, "validate", out).output
    text = run(data_cli, "inspect", out).output
    assert "fixture/discrete" in text and "win rate" in text and "steps/obs" in text

    card = json.loads(run(data_cli, "inspect", out, "--json").output)
    assert CARD_KEYS <= set(card)
    assert card["n_episodes"] == 12 and card["n_agents"] == 3 and card["level"] == "medium"
    returns = zarr.open_group(str(out), mode="r")["episodes/return"][:]
    assert card["return_mean"] == pytest.approx(float(np.mean(returns)))
    assert card["return_max"] == pytest.approx(float(np.max(returns)))


def test_inspect_plot_writes_a_png(tmp_path):
    out = tmp_path / "c.zarr"
    run(data_cli, "fixture", out, "--episodes", 10)
    run(data_cli, "inspect", out, "--plot", tmp_path / "returns.png")
    assert (tmp_path / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run(data_cli, "inspect", out, "--plot", tmp_path / "returns.jpg", code=2)
    assert "ending in .png" in result.output


def test_validate_reports_each_problem_on_one_line_and_exits_1(tmp_path):
    out = tmp_path / "c.zarr"
    run(data_cli, "fixture", out, "--episodes", 5)
    g = zarr.open_group(str(out), mode="r+")
    obs = g["steps/obs"][:]
    obs[3, 0, 0] = np.nan
    g["steps/obs"][:] = obs
    rew = g["steps/reward"][:]
    rew[0] += 50
    g["steps/reward"][:] = rew
    result = run(data_cli, "validate", out, code=1)
    assert "steps/obs[3]: non-finite value" in result.output
    assert "episodes/return[0]" in result.output
    assert "Traceback" not in result.output


def test_missing_and_foreign_paths_are_one_line_errors(tmp_path):
    result = run(data_cli, "validate", tmp_path / "nope.zarr", code=1)
    assert "no dataset at" in result.output
    (tmp_path / "dir").mkdir()
    result = run(data_cli, "inspect", tmp_path / "dir", code=1)
    assert "not a Zarr v3 store" in result.output


def test_existing_output_is_kept_without_force(tmp_path):
    out = tmp_path / "c.zarr"
    run(data_cli, "fixture", out, "--episodes", 5)
    before = zarr.open_group(str(out), mode="r")["steps/obs"][:]
    result = run(data_cli, "fixture", out, "--episodes", 7, code=2)  # a usage error, as in every command
    assert "already exists" in result.output and "--force" in result.output
    assert np.array_equal(zarr.open_group(str(out), mode="r")["steps/obs"][:], before)
    run(data_cli, "fixture", out, "--episodes", 7, "--force")
    assert json.loads(run(data_cli, "inspect", out, "--json").output)["n_episodes"] == 7


def test_bad_options_exit_2(tmp_path):
    assert "Invalid value" in run(data_cli, "fixture", tmp_path / "x.zarr", "--episodes", 0, code=2).output
    assert "Invalid value" in run(data_cli, "fixture", tmp_path / "x.zarr", "--shape", "nope", code=2).output


def test_error_lines_keep_their_brackets(tmp_path):
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "o.hdf5", "w") as f:
        f["o"] = np.zeros((3, 2, 4))
    out = run(data_cli, "import", "omiga", tmp_path / "o.hdf5", "--task", "Hopper-3x1", "--level", "medium",
              "--out", tmp_path / "o.zarr", code=1).output  # fmt: skip
    assert "lacks the OMIGA keys ['s', 'a', 'r', 'd'] (found ['o'])" in " ".join(out.split())
    out = run(data_cli, "validate", tmp_path / "runs[exp1]" / "d.zarr", code=1).output
    assert "runs[exp1]" in out  # a path with brackets is text, never rich markup


def test_import_and_export_omiga(tmp_path):
    omiga_file(tmp_path / "src.hdf5", [10, 3, 10], limit=10)
    result = run(
        data_cli,
        "import",
        "omiga",
        tmp_path / "src.hdf5",
        "--task",
        "HalfCheetah-6x1",
        "--level",
        "m-replay",
        "--out",
        tmp_path / "a.zarr",
        "--episode-limit",
        10,
    )
    assert "3 episodes, 23 transitions" in result.output and "assumed:" in result.output
    card = json.loads(run(data_cli, "inspect", tmp_path / "a.zarr", "--json").output)
    assert card["level"] == "medium-replay" and card["suite"] == "mamujoco" and card["task"] == "HalfCheetah-6x1"
    assert card["terminated_episodes"] == 1
    run(data_cli, "export", tmp_path / "a.zarr", "--format", "omiga", "--out", tmp_path / "b.hdf5")
    run(data_cli, "export", tmp_path / "a.zarr", "--format", "omiga", "--out", tmp_path / "b.hdf5", code=2)
    result = run(
        data_cli,
        "import",
        "omiga",
        tmp_path / "src.hdf5",
        "--task",
        "HalfCheetah-6x1",
        "--level",
        "superb",
        "--out",
        tmp_path / "c.zarr",
        code=2,
    )  # a usage error, as in collect
    assert "unknown level 'superb'" in result.output


def test_omgmg_batch_shows_what_trainers_receive(tmp_path):
    run(data_cli, "fixture", tmp_path / "d.zarr", "--shape", "discrete", "--episodes", 5)
    text = run(train_cli, "batch", tmp_path / "d.zarr", "--batch-size", 8).output
    assert "next_avail" in text and "(8, 3, 5)" in text and "int64" in text
    text = run(train_cli, "batch", tmp_path / "d.zarr", "--streaming").output
    assert "next_obs" in text


def test_versions(tmp_path):
    from omgmg import __version__

    assert __version__ in run(data_cli, "--version").output
    assert __version__ in run(train_cli, "--version").output


# ----- the first hour: a folder of seeds, $OMGMG_HOME, short runs, compare ---------------------------------------


def test_a_folder_of_seeds_is_reported_and_evaluated_as_mean_and_std(tmp_path):
    data = tmp_path / "d.zarr"
    run(data_cli, "fixture", data, "--episodes", 12)
    folder = tmp_path / "both" / "comadice"
    common = ["--algo", "comadice", "--steps", 20, "--eval-every", 10, "--eval-episodes", 2, "--hidden", 16]
    run(train_cli, "train", "--dataset", data, *common, "--seeds", "0,1", "--grid", "alpha=1,10", "--out", folder)
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 4
    text = run(train_cli, "report", folder).output
    assert "| comadice alpha=1 | 2 |" in text and "| comadice alpha=10 | 2 |" in text and " ± " in text
    assert (folder / "runs.md").exists() and (folder / "runs-curves.png").read_bytes()[:4] == b"\x89PNG"
    # beside another algorithm's folder of seeds: one table, labelled by each algorithm's own knobs
    both = tmp_path / "both"
    run(train_cli, "train", "--dataset", data, *common[2:], "--algo", "bc", "--seeds", "0", "--out", both / "bc")
    text = run(train_cli, "report", both).output
    assert "| bc | 1 |" in text and "| comadice alpha=10 | 2 |" in text and (both / "runs-curves.png").exists()
    shutil.copytree(both / "bc", both / "bc-again")  # the same run twice: never one seed counted as two
    twice = run(train_cli, "report", both, code=2).output
    assert "bc-again/bc-seed0" in twice and "with the same seed (0)" in twice
    shutil.rmtree(both / "bc-again")
    result = run(train_cli, "eval", folder, "--episodes", 2).output
    assert result.count("(step 20)") == 4 and "comadice alpha=1: " in result and "over 2 seed(s)" in result
    assert "eval-final.json" in {p.name for p in (folder / "comadice-seed0-alpha1").iterdir()}
    # a single run is still a run, and a folder of nothing says what it wants
    assert "(step 20)" in run(train_cli, "eval", folder / "comadice-seed1-alpha10", "--episodes", 1).output
    (tmp_path / "empty").mkdir()
    assert "holds no run directories" in run(train_cli, "eval", tmp_path / "empty", code=2).output


def test_a_run_names_its_dataset_relative_to_itself_and_survives_a_move(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    run(data_cli, "fixture", project / "d.zarr", "--episodes", 12)
    run(train_cli, "train", "--dataset", project / "d.zarr", "--algo", "bc", "--steps", 10, "--eval-episodes", 1,
        "--hidden", 16, "--out", project / "runs" / "bc")  # fmt: skip
    config = json.loads((project / "runs" / "bc" / "config.json").read_text())
    assert config["dataset"] == "../../d.zarr" and str(tmp_path) not in json.dumps(config)
    moved = tmp_path / "elsewhere"
    project.rename(moved)  # runs and data moved together: the run still finds its data
    assert "(step 10)" in run(train_cli, "eval", moved / "runs" / "bc", "--episodes", 1).output


def test_a_run_shorter_than_the_evaluation_interval_still_draws_a_curve(tmp_path):
    data = tmp_path / "d.zarr"
    run(data_cli, "fixture", data, "--episodes", 12)
    out = run(train_cli, "train", "--dataset", data, "--algo", "bc", "--steps", 40, "--eval-episodes", 1,
              "--hidden", 16, "--out", tmp_path / "r").output  # fmt: skip
    assert "evaluating every 4 steps (a tenth of --steps 40)" in out
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert len([r for r in log if "eval/return" in r]) == 10


def test_home_lists_and_prunes_only_what_omgmg_wrote(tmp_path, monkeypatch):
    from omgmg.datakit.outputs import OutputLock

    home = tmp_path / "home"
    monkeypatch.setenv("OMGMG_HOME", str(home))
    small = ["--behaviour.num-envs", 4, "--behaviour.rollout-len", 25, "--behaviour.eval-every", 1000]
    collected = run(data_cli, "collect", "fixture", "continuous", "--level", "medium", "--episodes", 10,
                    "--train-steps", 2000, *small).output  # fmt: skip
    assert "behaviour run: " in collected and "the training episodes medium-replay is collected from" in collected
    (home / "datasets" / "mine.zarr").mkdir()  # a folder omgmg did not write
    (home / "datasets" / "mine.zarr" / "notes.txt").write_text("keep me")
    listed = run(data_cli, "home").output
    assert "1 behaviour run, 1 dataset" in listed and "runs/fixture/continuous/numpy/happo/seed0-" in listed
    assert "mine.zarr" not in listed
    refused = run(data_cli, "home", "prune", code=2).output  # no terminal to ask: nothing removed
    assert "pass --yes" in refused and len(list((home / "datasets").iterdir())) == 2
    run_dir = next((home / "runs").glob("*/*/*/*/*"))
    with OutputLock(run_dir, "behaviour run"):  # a collection training it right now
        pruned = run(data_cli, "home", "prune", "--yes").output
    assert "in use by another omgmg process: left in place" in pruned and "removed 1 entry" in pruned
    assert run_dir.is_dir() and (home / "datasets" / "mine.zarr" / "notes.txt").read_text() == "keep me"
    run(data_cli, "home", "prune", "--kind", "run", "fixture", "--yes")
    assert not (home / "runs" / "fixture").exists()
    assert "nothing kept there yet" in run(data_cli, "home").output


def test_compare_of_two_tasks_says_so_and_writes_a_plot_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(data_cli, "fixture", "a.zarr", "--episodes", 8)
    run(data_cli, "fixture", "b.zarr", "--shape", "discrete", "--episodes", 8)
    out = run(data_cli, "compare", "a.zarr", "b.zarr").output
    assert "are datasets of different tasks" in out and not list(tmp_path.glob("*.png"))
    run(data_cli, "compare", "a.zarr", "b.zarr", "--plot", "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
