"""The imperative shell's device adapters: one module per external system."""
