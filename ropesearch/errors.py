"""One exception type for every user-facing failure.

Its message is a single line that names the problem and, where there is one, the fix;
the CLI prints it without a traceback.
"""


class RopesearchError(Exception):
    """Bad input or an unsupported situation, explained in one line."""


class OutOfMemory(RopesearchError):
    """A forward pass ran out of accelerator memory: at `length` tokens with `rows` rows in the pass
    (callers that retry smaller read the row count from here, not from the message)."""

    def __init__(self, length: int, rows: int):
        super().__init__(f"out of GPU memory at {length} tokens with {rows} row(s): lower the length or --max-batch")
        self.length, self.rows = length, rows

    def __reduce__(self):  # crosses processes (Ray) with its fields
        return type(self), (self.length, self.rows)
