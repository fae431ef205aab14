"""One error type per job, all caught by the CLI and printed as a single line."""

import sys


class SmearlensError(Exception):
    """Base for every error smearlens raises on bad input; the CLI prints it on one line."""


class ConfigError(SmearlensError):
    """An unknown preset, an inconsistent model config, a bad option value."""


class DataError(SmearlensError):
    """A malformed shard, corpus or tokenizer file."""


class CheckpointError(SmearlensError):
    """A missing, incomplete, malformed or mismatched checkpoint."""


class AnalysisError(SmearlensError):
    """Bad input to a probe or to `analyze`: an unknown metric, a run with no checkpoints, a sequence
    longer than the model's context, a missing tokenizer or data folder."""


class DiskFullError(SmearlensError):
    """No space left on the device (or quota exceeded) while writing a file; the file's previous
    version is intact and the partial write is removed."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (the first), for errors that quote a library's."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def escaped(text: str) -> str:
    """`text` on one line whole: its control characters (a newline a library quotes, say) as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def warn(message: str) -> None:
    """A one-line warning on stderr, in the CLI's form (`smearlens: warning: …`)."""
    print(f"smearlens: warning: {message}", file=sys.stderr, flush=True)
