"""The kernel layer's exceptions.

``ops`` is the bottom layer: it imports nothing from ``pipeline`` or ``flows``.
:class:`pipeline.errors.ImageprepError` and the pipeline's errors build on the
classes here, so the whole project still raises one family of exceptions
(``ImageprepError(ValueError)`` and its subclasses) and
``except ImageprepError`` catches a bad kernel argument too.
"""

from __future__ import annotations

__all__ = ["ImageprepError", "InvalidArgumentError"]


class ImageprepError(ValueError):
    """Base class of every error imageprep raises on purpose.

    Attributes:
        exit_code: the command line's exit status for it: 2 for a usage or
            configuration error (the default), 1 for bad data, I/O or a
            corrupt store (subclasses say so).
    """

    exit_code: int = 2


class InvalidArgumentError(ImageprepError):
    """A function argument has the wrong type, shape, dtype or value.

    The message names the parameter, what was expected and what was got, e.g.
    ``sigma must be >= 0, got -1.0``.
    """
