"""``python -m sim`` runs ``mmbc-sim``."""

from __future__ import annotations

from sim.cli import main

raise SystemExit(main())
