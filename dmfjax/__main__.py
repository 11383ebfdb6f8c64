"""``python -m dmfjax ARGS`` is the ``dmfjax`` command."""

from dmfjax import cli

cli.entry_point()
