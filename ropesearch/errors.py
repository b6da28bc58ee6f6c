"""One exception type for every user-facing failure.

Its message is a single line that names the problem and, where there is one, the fix;
the CLI prints it without a traceback.
"""


class RopesearchError(Exception):
    """Bad input or an unsupported situation, explained in one line."""
