"""``python -m mstagger COMMAND``: the same as the ``mstagger`` command."""

from mstagger.commands.main import run

run()
