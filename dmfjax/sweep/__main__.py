"""``python -m dmfjax.sweep ARGS`` is ``dmfjax sweep ARGS``."""

import sys

from dmfjax import cli

sys.exit(cli.main(["sweep", *sys.argv[1:]]))
