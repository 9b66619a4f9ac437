"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class LTBenchError(Exception):
    """A problem with the user's input (config, data, arguments) that names the fix."""


class ConfigError(LTBenchError):
    """An unknown, missing or ill-typed configuration key or value."""


class DataError(LTBenchError):
    """A missing, incomplete or corrupt dataset file."""


class NonFiniteLossError(LTBenchError):
    """Training produced a NaN or infinite loss."""


class RunInterrupted(LTBenchError):
    """A stop signal ended a run at an epoch boundary; its checkpoint resumes it."""
