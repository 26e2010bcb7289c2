"""The one exception type users see: a message that fits on one line, and an exit status."""


class FlowprobeError(Exception):
    """Bad input or environment (missing file, bad flag value, unknown interface...).
    The command line prints ``flowprobe: error: <message>`` and exits with ``status``."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def os_error_message(what: str, exc: OSError) -> str:
    """'cannot read FILE: No such file or directory', for any OSError."""
    return f"cannot {what}: {exc.strerror or exc}"
