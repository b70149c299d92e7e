"""Exceptions that carry a message meant for a person.

The CLI prints these as one line (``error: ...``) with no traceback; library callers can catch
them by type. Every message names the file (and record / line) and says what is wrong.
"""

from __future__ import annotations


class FusefaceError(Exception):
    """Base class of the errors fuseface reports to users."""


class DataError(FusefaceError, ValueError):
    """A data file is missing, corrupt, truncated or of the wrong shape (the message names it)."""


class ProtocolFileError(DataError):
    """A benchmark protocol file is missing or malformed (the message names the file and line)."""


class ConfigError(FusefaceError, ValueError):
    """A configuration is invalid: unknown key, wrong type, missing path."""


class CheckpointError(FusefaceError, ValueError):
    """A checkpoint or model file cannot be read (truncated, corrupt, wrong format)."""


class ExportError(FusefaceError):
    """An export cannot be made or does not reproduce the model (missing extra, runtime disagrees)."""
