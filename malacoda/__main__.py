"""``python -m malacoda`` is ``malacodactl``."""

from .cli import main

main()
