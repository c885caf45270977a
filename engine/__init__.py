"""MMBC engine: keeps a HomeWizard P1 meter at zero with Marstek Venus E batteries."""

from __future__ import annotations

__version__ = "2.0.0.dev0"
