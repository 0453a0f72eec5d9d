"""Errors that diskgraph reports to a user as one sentence.

Every refusal of bad input raises :class:`InputError` with a message that names
the file, the field and the fix. The command line turns it into exit status 2
and that one sentence on stderr, with no traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input or a bad request from the user; the message is one sentence.

    The message names the file (or option), the field, and what to do about it.
    """


class FormatError(InputError):
    """An on-disk directory diskgraph cannot read (missing, foreign, truncated or newer)."""
