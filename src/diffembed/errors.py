"""Errors users can act on.

Everything raised for bad input or a bad model path is a ``DiffembedError`` so the CLI can turn it
into a one-line message and exit 2, and the server into a 4xx JSON body, instead of a traceback.
"""


class DiffembedError(Exception):
    """Base class for errors caused by the caller's input or environment, not by a bug."""


class InputError(DiffembedError, ValueError):
    """The texts, documents or options passed in are invalid."""


class ModelLoadError(DiffembedError):
    """A model could not be found or loaded."""


class DataFileError(DiffembedError):
    """An input file is missing, unreadable or malformed."""


class IndexStoreError(DiffembedError):
    """An index folder is missing, unreadable, or was built with other settings."""


class ModelMismatchError(IndexStoreError):
    """A query would be embedded by a different model than the one the index was built with."""
