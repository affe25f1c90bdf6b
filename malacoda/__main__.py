"""``python -m malacoda`` is ``malacodactl``."""

from malacoda.cli.app import main

main()
