"""Tests of the device adapters."""
