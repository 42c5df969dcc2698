"""``python -m tickstream``: the command line (tickstream.cli)."""

from .cli import main

raise SystemExit(main())
