"""Errors the engine raises for bad input. Each message says what is wrong and how to fix it.

The service maps these onto gRPC status codes and the CLI onto exit codes; nothing here knows of either.
"""


class InterpruneError(Exception):
    """Base class of every error caused by what the user supplied (not a bug)."""


class ModelError(InterpruneError):
    """The architecture or the weights are unknown, unsafe, corrupt or do not fit each other."""


class DataError(InterpruneError):
    """The data set cannot be read, is unsafe, or does not fit the model."""


class SpecError(InterpruneError):
    """The job spec asks for something impossible (unknown criterion, unreachable target, ...)."""


class Cancelled(InterpruneError):
    """The caller asked the pipeline to stop."""
