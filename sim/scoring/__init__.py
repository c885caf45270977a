"""How well a run kept the meter at zero: the reference, every metric, tables and plots."""
