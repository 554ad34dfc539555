"""One base class for every error a user can cause (bad input, unsupported model)."""

from __future__ import annotations


class KgenError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero, without a traceback."""

    exit_code = 2


class TraceError(KgenError):
    """The model cannot be read as a layer graph (e.g. a subclassed model)."""


class UnsupportedError(KgenError):
    """Layers or configurations the converter has no lowering for, listed together."""


class WeightsError(KgenError):
    """Variables do not match the module (missing, unexpected or mis-shaped)."""


class SourceError(KgenError):
    """A model source (application name, file, weights option) cannot be used."""
