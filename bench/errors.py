"""User-facing errors.

Every error a user can cause (bad paths, malformed annotation files, unknown names) is raised as a
:class:`BenchError` whose message is one self-contained paragraph: what was expected, what was
found (naming the file or value), and what to do. The CLI prints the message without a traceback.
"""


class BenchError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class DataError(BenchError):
    """A dataset file or image is missing, unreadable or inconsistent."""


class UnknownNameError(BenchError, KeyError):
    """A name (method, dataset, suite, model, backend) that no registry knows."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
