"""The one exception type that means "the user gave us something wrong"."""


class CitysegError(Exception):
    """Bad input at an edge (CLI, config, file on disk).

    The message is one line that names the file or key and says what is valid. The CLI
    prints it without a traceback and exits with status 2.
    """
