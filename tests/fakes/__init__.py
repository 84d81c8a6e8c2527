"""Stand-ins for what this machine lacks (TensorRT, a GPU), in one place."""
