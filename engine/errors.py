"""The one exception type users see: a message that fits on one line, and an exit status."""


class FlowprobeError(Exception):
    """Bad input or environment (missing file, bad flag value, unknown interface...).
    The command line prints ``flowprobe: error: <message>`` and exits with ``status``.

    A library part that cannot work with a setting it was given names the setting (``setting``,
    an engine.options field such as "zmq.endpoints", and the offending ``value``), never a flag:
    the command line puts the flag's name in front."""

    def __init__(self, message: str, status: int = 1, setting: str = "", value=None):
        super().__init__(message)
        self.status = status
        self.setting = setting
        self.value = value


def os_error_message(what: str, exc: OSError) -> str:
    """'cannot read FILE: No such file or directory', for any OSError."""
    return f"cannot {what}: {exc.strerror or exc}"
