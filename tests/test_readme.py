"""The README's set-up commands are real: two of them, CI runs the same test command, the main job works."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from omgmg.cli.data import main as data_cli

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


@pytest.mark.unit
def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main_job, tests = commands
    assert "pytest" in tests and "pytest" not in main_job
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the README's test command and .ci/run disagree"


# The README's main job with its budgets cut (its own run takes ~4 minutes of a 10-minute suite): the same
# commands, options and outputs, so a renamed option or a broken step still fails here.
SMALL_BUDGETS = {"--train-steps": "20000", "--transitions": "2000", "--steps": "300", "--eval-every": "100"}


def with_small_budgets(argv: list[str]) -> list[str]:
    return [SMALL_BUDGETS.get(prev, arg) for prev, arg in zip(["", *argv], argv)]


@pytest.mark.unit
def test_small_budgets_replace_only_option_values():
    argv = ["omgmg", "train", "--steps", "3000", "--out", "r", "--eval-every", "1000"]
    assert with_small_budgets(argv) == ["omgmg", "train", "--steps", "300", "--out", "r", "--eval-every", "100"]


@pytest.mark.slow
@pytest.mark.learning
def test_readme_main_job_runs(tmp_path, monkeypatch):
    from omgmg.cli.train import main as train_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMGMG_HOME", str(tmp_path / "home"))
    main_job = setup_commands()[0]
    steps = [shlex.split(part) for part in main_job.split(" && ")]
    clis = {"omgmg-data": data_cli, "omgmg": train_cli}
    ours = [s for s in steps if s[0] in clis]
    assert [s[0] for s in ours] == ["omgmg-data", "omgmg"]
    given = {arg for argv in ours for arg in argv}
    assert set(SMALL_BUDGETS) <= given, "the README's main job no longer sets every budget this test cuts"
    for argv in map(with_small_budgets, ours):
        result = CliRunner().invoke(clis[argv[0]], argv[1:])
        assert result.exit_code == 0, (argv, result.output)
    assert "final" in result.output and "return" in result.output  # the result table
    assert Path("hopper-medium.zarr/zarr.json").is_file()
    assert Path("runs/hopper-medium-omgmg/curves.png").read_bytes()[:4] == b"\x89PNG"
