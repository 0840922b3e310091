"""Errors raised for unusable input.

Every message is one line that names the thing and the problem; the command
line turns :class:`InputError` into exit status 2 without a traceback.
"""


class InputError(ValueError):
    """Input that cannot be used (wrong kind of JSON, image of the wrong size...)."""
