"""Developer tooling: the local stack manager, the demo and its scenarios, the benchmark."""
