"""Evidence for interop (issue 17), run by hand: every conversion as a user runs it, on real MaMuJoCo data.

    python benchmarks/interop.py --out interop-evidence      # about 3 minutes on 2 cores

1. A file made the way OMIGA's environment makes one (HalfCheetah-6x1 rollouts in OMIGA's observation
   layout computed in float64, s == o, an extra d = 1 row per episode) is imported, validated, trained on
   with OMGMG and evaluated in the live environment (no --no-eval).
2. A collected dataset (Hopper-3x1, OMIGA's observation layout) is exported to OMIGA's HDF5 layout and
   fed to the official OMIGA code's input construction (tests/test_omiga.py replays it).
3. A vault recorded the way OG-MARL's ExperienceRecorder records one (gymnasium-robotics HalfCheetah-6x1,
   observations zero-padded, through a flashbax flat buffer) is imported, trained on and evaluated; the
   collected dataset is exported to a vault, read back by flashbax and compared row for row, and
   imported back.

Writes ``summary.json`` and ``summary.md`` into ``--out``; each step's command line and output go to
``commands.log``. A finished step is not redone when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(log: Path, *args: str) -> str:
    """One CLI command as a user types it; its output is logged, a failure stops the script."""
    start = time.time()
    module = {"omgmg-data": "omgmg.cli.data", "omgmg": "omgmg.cli.train"}[args[0]]  # this interpreter's omgmg
    done = subprocess.run([sys.executable, "-m", module, *args[1:]], capture_output=True, text=True)
    with open(log, "a") as f:
        took = f"(exit {done.returncode}, {time.time() - start:.0f} s)"
        f.write(f"$ {' '.join(args)}\n{done.stdout}{done.stderr}{took}\n\n")
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def omiga_environment_file(path: Path, episodes: int, seed: int) -> None:
    """HalfCheetah-6x1 rollouts (uniform random actions) written as OMIGA's environment writes them:
    o_i = znorm(concat(x, onehot(i))) in float64 from the simulator's float64 observation x, s = o,
    r and d as (T, 1), an extra row with d = 1 holding each episode's final observation."""
    import gymnasium as gym
    import h5py

    env = gym.make("HalfCheetah-v5")
    N, rng = 6, np.random.default_rng(seed)

    def omiga_obs(x):
        full = np.concatenate([np.broadcast_to(x, (N, x.size)), np.eye(N)], axis=1)
        return (full - full.mean(1, keepdims=True)) / full.std(1, keepdims=True)

    o, a, r, d = [], [], [], []
    for e in range(episodes):
        x, _ = env.reset(seed=seed + e)
        while True:
            act = rng.uniform(-1, 1, (N, 1))
            o.append(omiga_obs(x))
            a.append(act)
            x, reward, terminated, truncated, _ = env.step(act[:, 0])
            r.append(reward)
            d.append(0.0)
            if terminated or truncated:
                break
        o.append(omiga_obs(x))
        a.append(np.zeros((N, 1)))
        r.append(0.0)
        d.append(1.0)
    o = np.asarray(o)
    with h5py.File(path, "w") as f:
        f["o"], f["s"], f["a"] = o, o, np.asarray(a)
        f["r"], f["d"] = np.asarray(r)[:, None], np.asarray(d)[:, None]


def og_marl_recorded_vault(root: Path, episodes: int, seed: int) -> Path:
    """HalfCheetah-6x1 through gymnasium-robotics as OG-MARL's gymnasium_mamujoco wrapper gives it, recorded as
    its ExperienceRecorder records (one packed timestep per step into a flashbax flat buffer, written to a
    Vault), but with each step's own state (the recorder at f4eb8f0 keeps the reset state for every step)."""
    import flashbax as fbx
    import jax
    from flashbax.vault import Vault
    from gymnasium_robotics import mamujoco_v1

    env = mamujoco_v1.parallel_env("HalfCheetah", "6x1", agent_obsk=1)
    agents = env.possible_agents
    O = max(env.observation_space(a).shape[0] for a in agents)
    pad = lambda x: np.concatenate([x, np.zeros(O - len(x))]).astype(np.float32)  # noqa: E731
    rng, steps = np.random.default_rng(seed), []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        state = env.state().astype(np.float32)
        while True:
            actions = {ag: rng.uniform(-1, 1, 1).astype(np.float32) for ag in agents}
            nxt, rew, term, trunc, _ = env.step(actions)
            steps.append(
                {
                    "observations": np.stack([pad(obs[ag]) for ag in agents]),
                    "actions": np.stack([actions[ag] for ag in agents]),
                    "rewards": np.array([rew[ag] for ag in agents], np.float32),
                    "terminals": np.array([term[ag] for ag in agents]),
                    "truncations": np.array([trunc[ag] for ag in agents]),
                    "infos": {"state": state},
                }
            )
            obs, state = nxt, env.state().astype(np.float32)
            if all(term.values()) or all(trunc.values()):
                break
    buffer = fbx.make_flat_buffer(max_length=len(steps) + 2, min_length=1, sample_batch_size=1)
    buf = buffer.init(steps[0])
    vault = Vault("og_marl/gymnasium_mamujoco/6halfcheetah.vlt", buf.experience, rel_dir=str(root), vault_uid="Medium")
    add = jax.jit(buffer.add, donate_argnums=0)
    for t in steps:
        buf = add(buf, t)
    vault.write(buf)
    return root / "og_marl" / "gymnasium_mamujoco" / "6halfcheetah.vlt" / "Medium"


def train(log: Path, dataset: Path, out: Path, steps: int, algo: str = "omgmg") -> dict:
    """OMGMG on a dataset with evaluation in the live environment; returns the final evaluation record."""
    run(log, "omgmg", "train", "--dataset", str(dataset), "--algo", algo, "--steps", str(steps),
        "--eval-every", str(steps), "--eval-episodes", "5", "--out", str(out))  # fmt: skip
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "eval/return" in line]
    return {"steps": steps, "eval_return": evals[-1]["eval/return"], "eval_episodes": 5}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("interop-evidence"))
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--behaviour-steps", type=int, default=200_000)
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log, summary_path = out / "commands.log", out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    def step(name, fn):
        if name not in summary:
            start = time.time()
            summary[name] = fn()
            summary[name]["seconds"] = round(time.time() - start)
            summary_path.write_text(json.dumps(summary, indent=2))
        print(name, json.dumps(summary[name]))

    from omgmg.datakit import open_dataset, validate

    def omiga_file():
        src = out / "HalfCheetah-v2-6x1-random.hdf5"
        omiga_environment_file(src, episodes=20, seed=0)
        zarr = out / "omiga-file.zarr"
        run(log, "omgmg-data", "import", "omiga", str(src), "--task", "HalfCheetah-6x1", "--level", "random",
            "--out", str(zarr), "--force")  # fmt: skip
        ds = open_dataset(zarr)
        return {
            "rows": ds.n_transitions + ds.n_episodes,
            "episodes": ds.n_episodes,
            "truncated": int(sum(ds.read("steps/truncated", 0, ds.n_transitions))),
            "row_convention": ds.meta["collection"]["row_convention"].split(":")[0],
            "obs_mode": ds.spec.options.get("obs_mode"),
            "obs_dims": list(ds.spec.obs_dims),
            "state_dim": ds.spec.state_dim,
            "validate_problems": len(validate(zarr)),
            "dataset_return": float(np.mean(ds.read("episodes/return", 0, ds.n_episodes))),
            "omgmg": train(log, zarr, out / "runs" / "omiga-file", args.train_steps),
        }

    collected = out / "hopper-omiga-medium.zarr"

    def collect():
        run(log, "omgmg-data", "collect", "mamujoco", "Hopper-3x1", "--level", "medium", "--obs-mode", "omiga",
            "--train-steps", str(args.behaviour_steps), "--transitions", "50000", "--out", str(collected))  # fmt: skip
        ds = open_dataset(collected)
        returns = ds.read("episodes/return", 0, ds.n_episodes)
        return {"episodes": ds.n_episodes, "transitions": ds.n_transitions, "return_mean": float(returns.mean()),
                "return_std": float(returns.std())}  # fmt: skip

    def omiga_export():
        sys.path.insert(0, str(ROOT / "tests"))
        from test_omiga import official_training_inputs

        run(log, "omgmg-data", "export", str(collected), "--format", "omiga", "--force")
        exported = collected.parent / "Hopper-v2-3x1-medium.hdf5"
        import h5py

        with h5py.File(exported, "r") as f:
            shapes = {k: list(f[k].shape) for k in "soard"}
            dtypes = {k: str(f[k].dtype) for k in "soard"}
        inputs = official_training_inputs(exported)
        computed = {k: list(np.shape(inputs[k])) for k in ("nonterminal", "actor_input", "mixer_input")}
        N, O = inputs["widths"]
        return {"file": exported.name, "shapes": shapes, "dtypes": dtypes, "official_code_computes": computed,
                "mixer_width": N * O, "mixer_built_as": f"MixNet({O} * {N})"}  # fmt: skip

    def vault_import():
        vault = og_marl_recorded_vault(out / "vaults", episodes=20, seed=0)
        zarr = out / "vault.zarr"
        run(log, "omgmg-data", "import", "og-marl", str(vault), "--out", str(zarr), "--force")
        ds = open_dataset(zarr)
        return {
            "vault": "og_marl/gymnasium_mamujoco/6halfcheetah.vlt/Medium",
            "task": ds.spec.name,
            "episodes": ds.n_episodes,
            "transitions": ds.n_transitions,
            "obs_dims": list(ds.spec.obs_dims),
            "row_convention": ds.meta["collection"]["row_convention"].split(":")[0],
            "validate_problems": len(validate(zarr)),
            "dataset_return": float(np.mean(ds.read("episodes/return", 0, ds.n_episodes))),
            "omgmg": train(log, zarr, out / "runs" / "vault", args.train_steps),
        }

    def vault_export():
        from omgmg.datakit import iter_episodes
        from omgmg.datakit.ogmarl import read_experience

        vlt = out / "vaults" / "omiga" / "mamujoco" / "3hopper.vlt"
        run(log, "omgmg-data", "export", str(collected), "--format", "og-marl", "--out", str(vlt), "--force")
        exp = read_experience(vlt / "Medium")  # through flashbax's Vault.read
        eps = list(iter_episodes(collected))
        same = {
            "observations": np.array_equal(exp["observations"], np.concatenate([e["obs"] for e in eps])),
            "actions": np.array_equal(exp["actions"], np.concatenate([e["actions"] for e in eps])),
            "state": np.array_equal(exp["state"], np.concatenate([e["state"] for e in eps])),
            "rewards": np.array_equal(exp["rewards"][:, 0], np.concatenate([e["reward"] for e in eps])),
        }
        back = out / "vault-back.zarr"
        run(log, "omgmg-data", "import", "og-marl", str(vlt / "Medium"), "--out", str(back), "--force")
        again = all(
            all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(iter_episodes(collected), iter_episodes(back))
        )
        return {"rows": int(exp["observations"].shape[0]), "flashbax_reads_identical": same,
                "imported_back_identical": again}  # fmt: skip

    step("1_omiga_environment_file", omiga_file)
    step("2_collect_hopper_omiga_layout", collect)
    step("2_export_to_omiga", omiga_export)
    step("3_og_marl_recorded_vault", vault_import)
    step("3_export_to_vault", vault_export)
    (out / "summary.md").write_text("```json\n" + json.dumps(summary, indent=2) + "\n```\n")


if __name__ == "__main__":
    main()
