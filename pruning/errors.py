"""Errors the engine raises for bad input. Each message says what is wrong and how to fix it.

The service maps these onto gRPC status codes and the CLI onto exit codes; nothing here knows of either.
Messages echo user input only through ``clip``, so a 10,000-character name cannot flood a log or a reply.
"""


def clip(text: object, limit: int = 200) -> str:
    """``str(text)`` cut to at most ``limit`` characters, the cut marked: ``clip("x" * 500, 10) == "xxx…[+497]"``.

    For echoing user input (names, paths, values) in messages. Control characters become ``?`` so an echoed
    value cannot forge log lines.
    """
    value = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    if len(value) <= limit:
        return value
    keep = max(0, limit - len(f"…[+{len(value)}]"))   # the marker's longest form: never over `limit`
    return value[:keep] + f"…[+{len(value) - keep}]"


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
