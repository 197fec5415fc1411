"""`cl export RUN`: a run's adapter as full merged weights, or as a PEFT folder with a card."""

from __future__ import annotations

from pathlib import Path

import click

from engrain.cli.store_cmds import _open, friendly, store_option


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--merged", "merged_dir", metavar="DIR", type=click.Path(path_type=Path),
              help="Write the base model with the adapter (and its --on lineage) merged in.")
@click.option("--adapter", "adapter_dir", metavar="DIR", type=click.Path(path_type=Path),
              help="Copy the PEFT adapter with a README.md model card (spec, verdict, figures).")
@click.option("--overwrite", is_flag=True, help="Write into a folder that is not empty.")
@store_option
@friendly
def export(run_id, merged_dir, adapter_dir, overwrite, store_path):
    """Export RUN's adapter (any unique prefix of the run id) for use outside engrain.

    \b
    --merged DIR: full weights (peft's merge_and_unload; an adapter trained --on others
    has them merged first, in order) and the tokenizer, which plain transformers
    (AutoModelForCausalLM.from_pretrained(DIR)) and `vllm serve DIR` load without peft.
    --adapter DIR: the adapter as PEFT saved it, with a model card; one trained --on
    others brings them under DIR/on/.

    \b
    Examples:
      cl export 4f1c9a2e --merged exports/pinapple-merged
      cl export 4f1c9a2e --adapter exports/pinapple-adapter
    """
    from engrain.errors import EngrainError
    if not merged_dir and not adapter_dir:
        raise click.UsageError("give --merged DIR, --adapter DIR, or both")
    import engrain.export as ex
    db = _open(store_path)
    try:
        if adapter_dir:
            click.echo(f"adapter with its model card: {ex.adapter_folder(db, run_id, adapter_dir, overwrite=overwrite)}")
        if merged_dir:
            out = ex.merged(db, run_id, merged_dir, overwrite=overwrite)
            click.echo(f"merged model: {out} (AutoModelForCausalLM.from_pretrained('{out}'))")
    except EngrainError as err:
        raise click.ClickException(str(err)) from None
