"""Errors the CLI turns into one-line messages (no traceback unless --debug)."""


class FoproEdgeError(Exception):
    """Base class of every error meant for the user. Exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class ConfigError(FoproEdgeError):
    """A recipe, profile or argument is wrong: names the file and the dotted key. Exit code 2."""

    exit_code = 2


class DataError(ConfigError):
    """The data named by a recipe cannot be used as it is (missing, empty, unreadable)."""


class MissingDependencyError(FoproEdgeError):
    """An optional runtime package is not installed; the message carries the install command."""

    exit_code = 3


class TrainingError(FoproEdgeError):
    """Training cannot go on (non-finite loss, ...); the last good checkpoint is kept."""

    exit_code = 4


class GateFailedError(FoproEdgeError):
    """An exported artifact failed its rare-class accuracy gate. Exit code 5."""

    exit_code = 5


class UnverifiedError(FoproEdgeError):
    """A step produced its files but could not be run and checked here (e.g. a TensorRT engine
    without a GPU): not a pass. Exit code 6."""

    exit_code = 6
