"""ebru: diffusion models end to end, offline, on PyTorch."""

__version__ = "0.1.0"
