"""``python -m descent_client``: the same command line as ``descent``."""

from descent_client.cli import main

raise SystemExit(main())
