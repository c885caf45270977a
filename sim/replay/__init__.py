"""Closed-loop runs of the engine against the plant: in-process, over sockets, in real time."""
