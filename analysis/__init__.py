"""smearlens analysis: hooks, probes and tables over checkpoints."""
