"""Options several commands share, defined once."""

from __future__ import annotations

from pathlib import Path

import click


def out_dir_option(where: str):
    return click.option("--out-dir", type=click.Path(path_type=Path), default=Path("adapters"), show_default=True,
                        help=f"Adapters land in {where}.")


store_option = click.option("--store", type=click.Path(path_type=Path), envvar="ENGRAIN_STORE",
                            help="The run store (DuckDB file). [default: ./engrain.duckdb, or $ENGRAIN_STORE]")

eval_n_option = click.option("--eval-n", type=click.IntRange(min=1), default=None,
                             help="Answers per eval suite (before and after training) [default: the "
                                  "spec's regression.eval_n, else 200].")
