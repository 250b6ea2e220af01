"""worldvla: a fast, self-contained re-implementation of WorldVLA and RynnVLA-002."""

__version__ = "0.1.0"
