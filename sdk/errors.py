"""The one base class of every error engrain raises on purpose.

An internal tool that embeds the SDK catches ``EngrainError`` and shows its message (each
one says what went wrong and how to fix it); anything else is a bug worth a traceback.
This module imports nothing, so every room of the house can use it.
"""

from __future__ import annotations


class EngrainError(Exception):
    """A problem the user can fix; ``str(e)`` is a one-line message that says how."""
