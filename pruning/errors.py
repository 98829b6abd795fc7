"""Errors the engine raises on purpose. Each message says what is wrong and how to fix it.

Two families under ``InterpruneError``:
- bad input (``ModelError``, ``DataError``, ``SpecError``, ``Cancelled``): the caller can fix it;
- ``EngineError``: the engine cannot do the job (``UnsupportedModel``: a structure it does not handle; otherwise
  a bug). Its message names the layer or operation, never just a bare ``ZeroDivisionError`` or ``KeyError``.

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
    """Base class of every error the engine raises deliberately."""


class ModelError(InterpruneError):
    """The architecture or the weights are unknown, unsafe, corrupt or do not fit each other."""


class NonFiniteLogits(ModelError):
    """The model's logits hold NaN or inf (broken weights, or a fine-tune that diverged)."""


class DataError(InterpruneError):
    """The data set cannot be read, is unsafe, or does not fit the model."""


class SpecError(InterpruneError):
    """The job spec asks for something impossible (unknown criterion, unreachable target, ...)."""


class TargetUnreachable(SpecError):
    """The reduction asked for is more than the model allows; ``reachable`` is the largest it can reach (0..1)."""

    def __init__(self, message: str, reachable: float, metric: str = "macs") -> None:
        super().__init__(message)
        self.reachable = reachable
        self.metric = metric


class Cancelled(InterpruneError):
    """The caller asked the pipeline to stop."""


class EngineError(InterpruneError):
    """Not the caller's fault: the engine failed on this model (a bug). The message names the layer or op."""


class UnsupportedModel(EngineError):
    """The model has a structure the engine cannot prune or re-fit; the message names the layer or op."""
