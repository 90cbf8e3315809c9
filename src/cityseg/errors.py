"""The one exception type that means "the user gave us something wrong"."""


class CitysegError(Exception):
    """Bad input at an edge (CLI, config, file on disk).

    The message is one line that names the file or key and says what is valid. The CLI
    prints it without a traceback and exits with status 2.
    """


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when it has none): library errors quoted
    inside a one-line CitysegError."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
