"""The one exception type spikelite raises for bad input.

Every user-facing problem (a wrong argument, a missing file, a model that cannot be converted)
raises :class:`SpikeliteError` with a message that names what is wrong; the CLI turns it into one
line on stderr and a non-zero exit status.
"""


class SpikeliteError(ValueError):
    """Bad input to spikelite: the message names the argument, module or file at fault."""
