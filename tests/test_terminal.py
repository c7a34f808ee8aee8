"""The commands as a person runs them: in a terminal (live bars, one per phase, output that does not grow
with the work) and piped into a log (plain progress lines at a steady rhythm, nothing cut at 80 columns).

Every command that draws progress runs here in a pseudo-terminal on a tiny workload (``tests/terminal.py``).
No wall-time assertion: the output's size is bounded per second of run, whatever the machine's speed.
"""

from __future__ import annotations

import functools
import http.server
import re
import subprocess
import sys
import threading

import pytest
from conftest import bc_sweep_toml
from terminal import run_in_terminal
from test_omiga import omiga_file

from omgmg.collectors.collect import CollectRequest, collect
from omgmg.collectors.fixtures import make_fixture

pytestmark = pytest.mark.slow

COLLECT = ["collect", "fixture", "continuous", "--level", "medium", "--train-steps", "1500", "--force"]
SMALL_BEHAVIOUR = ["--behaviour.num-envs", "4", "--behaviour.rollout-len", "25", "--behaviour.eval-every", "500"]
# live bars redraw at most 10 times a second: two bars of one 100-column line each stay far below this
MAX_BYTES_PER_SECOND = 10_000


def test_collect_draws_one_bar_per_phase_however_many_episodes(tmp_path):
    runs = {}
    for episodes in (10, 100):
        home = tmp_path / f"home{episodes}"  # a fresh behaviour run each time: both phases draw
        out = tmp_path / f"d{episodes}.zarr"
        args = [*COLLECT, "--episodes", str(episodes), "--out", str(out), *SMALL_BEHAVIOUR]
        runs[episodes] = run = run_in_terminal("omgmg-data", *args, env={"OMGMG_HOME": str(home)})
        assert run.exit_code == 0, run.screen
        assert len(run.lines_with("training behaviour policy")) == 1, run.screen
        assert len(run.lines_with("collecting medium")) == 1, run.screen
        assert f"{episodes}/{episodes}" in run.lines_with("collecting medium")[0]
        assert len(run.output) / run.seconds < MAX_BYTES_PER_SECOND, (len(run.output), run.seconds)
    # the bytes follow the run's duration (redraws), not the number of episodes
    assert len(runs[100].output) / runs[100].seconds < 3 * max(1.0, len(runs[10].output) / runs[10].seconds)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("terminal")
    make_fixture(root / "d.zarr", "continuous", episodes=12, seed=0)
    make_fixture(root / "e.zarr", "continuous", episodes=12, seed=1)
    collect(CollectRequest("fixture", "continuous", "random", episodes=12, out=root / "r.zarr"), on_note=print)
    from omgmg.datakit.ogmarl import export_vault

    export_vault(root / "d.zarr", root / "v0.vlt")  # the import's own input (the test ids run in any order)
    omiga_file(root / "x.hdf5", [10, 4, 10, 6])
    (root / "spec.toml").write_text(bc_sweep_toml(root / "d.zarr", steps=20, eval_every=10))
    from click.testing import CliRunner

    from omgmg.cli.train import main as train_cli

    trained = CliRunner().invoke(
        train_cli,
        ["train", "--dataset", str(root / "d.zarr"), "--algo", "bc", "--seeds", "0-1", "--steps", "20",
         "--eval-every", "20", "--eval-episodes", "1", "--hidden", "16", "--out", str(root / "seeds")],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output  # two runs for eval to report on
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )  # serves d.zarr for download
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# (command, arguments with {root} and {url}, the bar each phase draws)
COMMANDS = [
    ("omgmg-data", "fixture {root}/f.zarr --episodes 40", ["writing episodes"]),
    ("omgmg-data", "verify {root}/r.zarr --episodes 0", ["replaying episodes"]),
    ("omgmg-data", "compare {root}/d.zarr {root}/e.zarr --plot {root}/c.png", ["hashing episodes"]),
    (
        "omgmg-data",
        "import omiga {root}/x.hdf5 --task Hopper-3x1 --level medium --episode-limit 10 --out {root}/i.zarr",
        ["importing rows"],
    ),  # noqa: E501
    ("omgmg-data", "export {root}/d.zarr --format omiga --out {root}/d.hdf5", ["exporting rows"]),
    ("omgmg-data", "export {root}/d.zarr --format og-marl --out {root}/v.vlt", ["exporting rows"]),
    (
        "omgmg-data",
        "import og-marl {root}/v0.vlt --out {root}/o.zarr",
        ["importing rows"],
    ),  # noqa: E501
    ("omgmg-data", "download {url}/d.zarr --out {root}/dl.zarr", ["downloading files"]),
    (
        "omgmg",
        "train --dataset {root}/d.zarr --algo bc --steps 40 --eval-every 20 --hidden 16 --out {root}/run",
        ["bc on d.zarr"],
    ),  # noqa: E501
    ("omgmg", "sweep {root}/spec.toml --smoke --out {root}/sweep --workers 1", ["sweep tiny (smoke)"]),
    ("omgmg", "eval {root}/seeds --episodes 2", ["evaluating runs"]),
]
BAR_END = re.compile(r"(\d+:\d\d:\d\d|-:--:--)$")  # a bar's line ends with its time left


@pytest.mark.parametrize("command, args, bars", COMMANDS, ids=[f"{c} {a.split()[0]}" for c, a, _ in COMMANDS])
def test_every_command_draws_each_bar_once_in_a_terminal(inputs, command, args, bars):
    root, url = inputs
    run = run_in_terminal(command, *args.format(root=root, url=url).split(), cwd=root)
    assert run.exit_code == 0, run.screen
    for bar in bars:
        assert len(run.lines_with(bar)) == 1, run.screen
        # counts and times whole, nothing printed onto the bar's line (output printed during the bar goes above it)
        assert BAR_END.search(run.lines_with(bar)[0]) and "/…" not in run.lines_with(bar)[0], run.screen
    assert len(run.output) / run.seconds < MAX_BYTES_PER_SECOND, (len(run.output), run.seconds)
    assert "Traceback" not in run.screen


def _piped(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "OMGMG_PROGRESS_INTERVAL")}
    return subprocess.run(
        [sys.executable, "-m", "omgmg.cli.data", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment | (env or {}),
        cwd=cwd,
    )


def test_a_log_gets_plain_progress_lines_at_a_steady_rhythm(tmp_path):
    args = [*COLLECT, "--episodes", "30", "--out", tmp_path / "d.zarr", *SMALL_BEHAVIOUR]
    run = _piped(*args, env={"OMGMG_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    training = [line for line in lines if "training behaviour policy:" in line]
    # a line per evaluation (the info changes) and the end; the 30 s rhythm adds none to a run this short
    assert 3 <= len(training) <= 6, lines
    line = r"\[0:00:\d\d\] training behaviour policy: 1,500/1,500 \(100%\), [\d,.]+/s, eval score .*"
    assert re.fullmatch(line, training[-1]), training
    collecting = [line for line in lines if "collecting medium:" in line]
    assert 1 <= len(collecting) <= 3 and "30/30 (100%)" in collecting[-1], lines
    assert "\x1b[" not in run.stderr + run.stdout  # no terminal control codes in a log
    # with a rhythm of 0 s every update is a line: the rhythm is what bounds a log
    again = _piped(*args, "--seed", "1", env={"OMGMG_HOME": str(tmp_path / "home"), "OMGMG_PROGRESS_INTERVAL": "0"})
    assert len([line for line in again.stderr.splitlines() if "training behaviour policy:" in line]) > len(training)


def test_piped_output_is_not_cut_at_80_columns(tmp_path):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "dataset-with-a-long-name.zarr"
    deep.parent.mkdir(parents=True)
    make_fixture(deep, "continuous", episodes=3)
    run = _piped("validate", deep)
    assert run.returncode == 0 and f"valid: {deep}" in run.stdout.replace("\n", "")
    assert f"valid: {deep}\n" in run.stdout  # on one line
