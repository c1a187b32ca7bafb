"""Exceptions raised by the extract package; each message names the file, row or value at fault."""


class DataError(ValueError):
    """Invalid competition data: CSV columns, labels, ids or images."""


class BadImageError(DataError):
    """An image that cannot be decoded."""

    def __init__(self, path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: cannot decode image ({reason})")

    def __reduce__(self):  # raised in a worker process, it must unpickle in the parent
        return type(self), (self.path, self.reason)


class WorkspaceError(RuntimeError):
    """A workspace, fold assignment or cache that does not match the request."""


class UnknownBackboneError(KeyError):
    """A backbone name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class WeightsError(RuntimeError):
    """Weights that cannot be fetched or do not fit the model."""
