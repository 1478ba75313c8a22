"""User-facing errors: a problem the user can fix, said in one paragraph, never a stack trace."""

from __future__ import annotations

__all__ = ["GeminiRayError", "ConfigError"]


class GeminiRayError(Exception):
    """Bad input or environment: the message names the problem and the fix. The CLI exits 2 on it."""


class ConfigError(GeminiRayError, ValueError):
    """A config key is unknown, has the wrong type, or is out of range. The message names the dotted key."""
