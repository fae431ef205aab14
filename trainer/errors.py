"""One error type per job, all caught by the CLI and printed as a single line."""


class SmearlensError(Exception):
    """Base for every error smearlens raises on bad input; the CLI prints it on one line."""


class ConfigError(SmearlensError):
    """An unknown preset, an inconsistent model config, a bad option value."""


class DataError(SmearlensError):
    """A malformed shard, corpus or tokenizer file."""


class CheckpointError(SmearlensError):
    """A missing, incomplete, malformed or mismatched checkpoint."""
