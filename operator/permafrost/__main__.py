"""Allow ``python -m permafrost``."""

from permafrost import cli

raise SystemExit(cli.main())
