"""The imperative shell's runtime: the control cycle, its supervision and the published state."""

from __future__ import annotations
