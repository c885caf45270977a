"""``python -m engine`` runs the daemon, as ``mmbc-engine``."""

from __future__ import annotations

from engine.app import main

raise SystemExit(main())
