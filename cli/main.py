"""The ``cl`` command: a thin click layer over the engrain library.

Heavy imports (torch, transformers, peft, litellm) happen inside the commands that need
them, so ``cl --help`` and ``cl runs`` start instantly. Each group of commands lives in
its own module and is registered here.
"""

from __future__ import annotations

import importlib
import warnings

import click

# peft calls a transformers property that transformers 5 deprecates: noise on every command
# that loads a model, and nothing the user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# command name -> "module:function"; imported on first use only.
COMMANDS = {
    "validate": "engrain.cli.spec_cmds:validate",
    "compile": "engrain.cli.spec_cmds:compile_cmd",
    "fit": "engrain.cli.fit_cmd:fit",
    "compose": "engrain.cli.compose_cmd:compose",
    "lab": "engrain.cli.lab_cmd:lab",
    "runs": "engrain.cli.store_cmds:runs",
    "show": "engrain.cli.store_cmds:show",
    "report": "engrain.cli.store_cmds:report",
    "eval": "engrain.cli.eval_cmd:eval_cmd",
    "adapters": "engrain.cli.adapters_cmd:adapters",
    "export": "engrain.cli.export_cmd:export",
    "serve": "engrain.cli.serve_cmd:serve",
    "generate": "engrain.cli.use_cmds:generate",
    "chat": "engrain.cli.use_cmds:chat",
}

HELP = {
    "validate": "Check behavior specs; exit 0 if all are valid, 1 if not.",
    "compile": "Show what the student and the teacher will see for a spec.",
    "fit": "Train one LoRA adapter for a behavior spec with RMSD.",
    "compose": "Learn several behavior specs into one adapter, each from its own teacher.",
    "lab": "The embedded lab model: build it, evaluate it.",
    "runs": "List the runs in the store.",
    "show": "Show one run: config, steps, evals, adapter verdict.",
    "report": "Write a self-contained HTML report of a run.",
    "eval": "Re-run the forgetting checks for a run or an adapter.",
    "adapters": "The adapter library: list, promote, roll back each behavior's current adapter.",
    "export": "Write a run's adapter merged into full weights, or as a PEFT folder with a model card.",
    "serve": "Serve the base model and the current adapters with vLLM (one model name each).",
    "generate": "Answer a prompt (or a file of them) with adapters on the base model.",
    "chat": "Talk to the base model with adapters on, in the terminal.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            @click.command(name=name, help=HELP[name] + " (not available in this build)")
            def missing():
                raise click.ClickException(f"`cl {name}` is not available in this build")
            return missing

    def format_commands(self, ctx, formatter):
        # Help texts from the table above: listing commands must not import torch.
        with formatter.section("Commands"):
            formatter.write_dl([(n, HELP[n]) for n in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="engrain")
def cli():
    """engrain: teach a language model a behavior into its weights.

    \b
    Typical session:
      cl validate behaviors/*.yaml          check your specs
      cl compile behaviors/pinapple.yaml    see what student and teacher see
      cl fit behaviors/pinapple.yaml        train an adapter (lab model by default)
      cl runs                               what ran, how it did
    """


if __name__ == "__main__":
    cli()
