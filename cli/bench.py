"""``vitok bench``: benchmarks that later changes compare against (codec throughput, training throughput)."""
from __future__ import annotations

import click

from vitok.cli.main import LazyGroup

SUBCOMMANDS = {"codec": "vitok.cli.bench_codec:bench_codec", "train": "vitok.cli.bench_train:bench_train"}


@click.group(cls=LazyGroup, lazy_commands=SUBCOMMANDS)
def bench() -> None:
    """Benchmarks: codec speed (`bench codec`) and training throughput (`bench train`)."""
