"""Typed errors of the engine.

Every error a user can cause carries a message that names the problem and
says what to do; front ends (CLI, QGIS task, Processing) show ``str(err)``
and never a traceback.
"""


class RoofDetectorError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputRasterError(RoofDetectorError):
    """The raster cannot be used (missing, unreadable, no CRS, wrong bands...)."""


class LargeRunError(InputRasterError):
    """A run far beyond the usual size (tiles, memory); ``confirmable``: the user may confirm it."""

    def __init__(self, message: str, confirmable: bool = True):
        super().__init__(message)
        self.confirmable = confirmable


class ModelError(RoofDetectorError):
    """The model file cannot be loaded or its metadata is unusable."""


class LabelError(RoofDetectorError):
    """A label / reference polygon layer cannot be used."""


class OutputError(RoofDetectorError):
    """The output cannot be written (path, existing layer, disk, lock)."""


class Cancelled(RoofDetectorError):
    """The user cancelled; nothing was written."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written."):
        super().__init__(message)
