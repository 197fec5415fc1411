"""``python -m engrain.cli``: the ``cl`` command, for launchers that start a module
(``accelerate launch -m engrain.cli fit SPEC``, ``torchrun -m engrain.cli fit SPEC``)."""

from engrain.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="cl")
