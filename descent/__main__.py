"""``python -m descent``: the same command line as ``descent``."""

from descent.cli import main

raise SystemExit(main())
