"""``omgmg``: train and evaluate offline MARL algorithms on omgmg datasets."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import console, friendly_errors, version_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
def main():
    """Offline MARL training and evaluation (OMGMG and baselines)."""


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--streaming", is_flag=True, help="Use the bounded-memory streaming loader.")
@friendly_errors
def batch(dataset: Path, batch_size: int, seed: int, streaming: bool):
    """Show one minibatch exactly as trainers receive it from the shared loader."""
    from dataclasses import fields

    from rich.table import Table

    from datakit import TransitionLoader

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
        table.add_row(f.name, str(tuple(v.shape)), str(v.dtype).removeprefix("torch."),
                      ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in first))
    console.print(table)


if __name__ == "__main__":
    main()
