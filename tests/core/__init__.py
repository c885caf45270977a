"""Tests of the pure decision core (engine/core)."""
