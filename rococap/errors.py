"""Errors that a user can act on: each message names the problem and the fix."""


class RococapError(Exception):
    """An error shown to the user as one line, with a non-zero exit and no traceback."""


class DatasetError(RococapError):
    """The dataset, split or image ids cannot be used."""


class ModelError(RococapError):
    """The model or its processor cannot be loaded."""


class OutputError(RococapError):
    """The output folder cannot be used for this run."""


class ImageError(Exception):
    """One image cannot be captioned; recorded as a failed row, never fatal for a run."""


class SettingsError(RococapError, ValueError):
    """An option value is out of range or malformed."""


class TransientError(Exception):
    """A failure worth retrying the whole task for (the GPU or a service was briefly unavailable)."""
