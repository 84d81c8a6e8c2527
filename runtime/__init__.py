"""The runtime: model registry, declared stages, backends, sessions and their memory."""
