"""Exception types of memla.

Every error a user can cause (bad input file, unknown model, bad request) is a
`MemlaError`; the CLI prints its message on one line and exits with status 2.
"""


class MemlaError(Exception):
    """Base class of the errors memla raises for bad input (CLI exit status 2)."""


class ModelLoadError(MemlaError):
    """A model could not be found, reached or recognised."""


class DataError(MemlaError):
    """A dataset file or record is malformed."""


class EditError(MemlaError):
    """An edit request is malformed or an editor cannot serve it."""


class DeviceError(MemlaError):
    """A device or device map was asked that this machine or installation cannot serve."""
