"""The error types every vitok layer raises for user-facing problems (bad files, bad options)."""


class VitokError(Exception):
    """Base class: a problem the user can fix; the CLI prints it as one line, without a traceback, and exits
    with ``exit_code``."""

    exit_code = 1


class VideoReadError(VitokError):
    """A video or image file could not be read: missing, not a video, truncated, no frames, bad range."""


class VideoWriteError(VitokError):
    """A video could not be written: bad frames, unknown codec, unwritable destination."""
