"""Domain errors of the model layer; the API maps each one to a problem-details response, once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# (field path, message), e.g. ("rows.0.sepal_length", "must be a finite number").
FieldError = tuple[str, str]


class ModelError(Exception):
    """Base class: every failure of the model layer that a caller may want to tell a client about."""


class ModelNotFound(ModelError):
    """No model of that name is served."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = tuple(available)
        super().__init__(f"no model named {name!r}; available: {', '.join(self.available)}")


class InvalidInput(ModelError):
    """The rows do not match the model's features; `errors` lists every problem with its field path."""

    def __init__(self, model: str, errors: Sequence[FieldError], expected: Sequence[str]) -> None:
        self.model = model
        self.errors = tuple(errors)
        self.expected = tuple(expected)
        super().__init__(
            f"invalid input for model {model!r} ({len(self.errors)} problem(s)); "
            f"expected features in this order: {', '.join(self.expected)}"
        )


class BatchTooLarge(ModelError):
    """More rows in one request than the model's `max_batch_size`."""

    def __init__(self, model: str, rows: int, max_rows: int, field: str = "rows") -> None:
        self.model = model
        self.rows = rows
        self.max_rows = max_rows
        self.field = field
        super().__init__(f"{rows} rows sent to model {model!r}; at most {max_rows} per request")


class ModelOverloaded(ModelError):
    """The model's bounded queue is full; the request was refused at once, without waiting."""

    def __init__(self, model: str, retry_after: int) -> None:
        self.model = model
        self.retry_after = retry_after  # whole seconds, suitable for a Retry-After header
        super().__init__(f"model {model!r} is overloaded; retry after {retry_after} s")


class PredictionTimeout(ModelError):
    """The prediction did not finish within the model's `timeout_ms` (queue wait included)."""

    def __init__(self, model: str, timeout_ms: int) -> None:
        self.model = model
        self.timeout_ms = timeout_ms
        super().__init__(f"model {model!r} did not answer within {timeout_ms} ms")


class ModelWorkerCrashed(ModelError):
    """The worker process running this request died (killed, out of memory, segfault); retry."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"the worker process of model {model!r} died; it is being replaced")


class PredictionFailed(ModelError):
    """The runtime raised an unexpected error for a valid input (a bug or a broken model file)."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"model {model!r} failed to compute a prediction")


class ModelsNotReady(ModelError):
    """The registry has not finished starting, or is shutting down."""

    def __init__(self) -> None:
        super().__init__("models are not ready (starting or shutting down)")


class VersionUnavailable(ModelsNotReady):
    """A version the desired state routes to that this process does not serve (yet): still loading,
    or it could not be taken here (its entry, its file or its load failed: `reason`), in which case
    it is tried again every `retry_after` seconds while the rest is served."""

    def __init__(self, model: str, version: str, reason: str | None, retry_after: int) -> None:
        why = reason or "still loading"
        ModelError.__init__(self, f"model {model} version {version} is not served here: {why}")
        self.model = model
        self.version = version
        self.reason = reason
        self.retry_after = retry_after


class ModelLoadError(ModelError):
    """A model or the manifest could not be loaded at start-up; the message is one line naming the file."""

    def __init__(self, file: str, reason: str) -> None:
        self.file = file
        # One line, so a start-up failure reads well in a log line and a terminal.
        self.reason = " ".join(reason.split())
        super().__init__(f"{file}: {self.reason}")


class BackendUnavailable(ModelError):
    """A remote model's server cannot be reached (refused, reset before answering, 5xx, or the
    circuit breaker is open after repeated failures); nothing was computed, retry later."""

    def __init__(self, model: str, reason: str, retry_after: int = 1) -> None:
        self.model = model
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"the server of model {model!r} is unavailable: {reason}")


class BackendError(ModelError):
    """A remote model's server answered, but not with a usable prediction (a 4xx such as an unknown
    model or version, a malformed or wrongly shaped Open Inference Protocol response)."""

    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(f"the server of model {model!r} gave no usable answer: {reason}")
