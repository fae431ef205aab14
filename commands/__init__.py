"""The command layer: the `smearlens` command line and the demo/study orchestration, above trainer and analysis."""
