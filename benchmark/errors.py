"""User-facing errors.

Every error a user can cause (a typo, a bad number, a missing file) is raised as a
`DAEBenchError` whose message is one readable paragraph naming what is wrong and
what is valid. The CLI prints these without a traceback; anything else is a bug.
"""

from __future__ import annotations


class DAEBenchError(Exception):
    """Base class of every error the CLI reports as a clean one-paragraph message."""


class ConfigError(DAEBenchError):
    """A grid config (YAML or its values) is invalid."""


class UnknownNameError(DAEBenchError, KeyError):
    """A name that no registry knows (with a did-you-mean suggestion)."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class RegistryCollisionError(DAEBenchError):
    """Two plugins tried to register the same name."""


class IncompletePluginError(DAEBenchError):
    """A plugin class lacks a method its base class requires (caught at registration)."""


class DataUnavailableError(DAEBenchError):
    """A dataset is not on disk and cannot be downloaded."""


class CheckpointError(DAEBenchError):
    """A checkpoint file cannot be loaded safely or does not fit the architecture."""


class StageFailedError(DAEBenchError):
    """One or more stages of a grid failed; the others were kept."""


class StoreError(DAEBenchError):
    """The artifact store's location cannot be used."""
