"""Errors a person can act on.

Anything raised as a `UserError` ends the command with exit code 2 and its one-line message, without a
traceback (unless `--debug`). Everything else is a bug in ft and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the config, the data or the command line that the user can fix."""

    exit_code = 2


class ConfigError(UserError):
    """The YAML file or a command-line override is wrong."""


class DataError(UserError):
    """A dataset file, column or row is wrong."""

