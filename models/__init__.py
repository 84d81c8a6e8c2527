"""The networks, re-implemented so that the official checkpoints load with ``strict=True``."""
