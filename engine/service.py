"""Running unattended: logging (stderr, file, syslog/journald), SIGHUP, pid file, privilege drop."""
from __future__ import annotations

import io
import logging
import logging.handlers
import os
import signal
import sys
import threading
from typing import Callable

from engine.errors import FlowprobeError, os_error_message

log = logging.getLogger("flowprobe")


# --- logging --------------------------------------------------------------------------------
class _SyslogFormatter(logging.Formatter):
    """'flowprobe[PID]: message' without the 'flowprobe: ' prefix the messages carry."""

    def format(self, record):
        msg = record.getMessage()
        if msg.startswith("flowprobe: "):
            msg = msg[len("flowprobe: "):]
        return f"flowprobe[{os.getpid()}]: {msg}"


class _LogWriter(io.TextIOBase):
    """sys.stderr replacement while logging elsewhere: every line written becomes a log record."""

    def __init__(self):
        self._buf = ""

    def writable(self):
        return True

    def write(self, text):
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip():
                log.log(level_of(line), line)
        return len(text)

    def flush(self):
        pass


class _LogFile(logging.FileHandler):
    """A log file whose disk fills up costs log lines, never the capture: one warning on the
    real stderr (the terminal, the unit's journal), the lines lost counted in ``lost``.
    (logging's own handleError prints to sys.stderr, which is routed back into this log.)"""

    lost = 0

    def handleError(self, record):
        self.lost += 1
        if self.lost == 1:
            e = sys.exc_info()[1]
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            sys.__stderr__.write(f"flowprobe: warning: cannot write log file {self.baseFilename}: "
                                 f"{why}; log lines are lost until it can be written again\n")


def level_of(line: str) -> int:
    if "error:" in line[:40]:
        return logging.ERROR
    if "warning:" in line[:40]:
        return logging.WARNING
    return logging.INFO


def setup_logging(opts) -> Callable[[], None]:
    """Install the handlers ``opts`` (engine.options.ServiceOptions) asks for; returns the
    function SIGHUP calls (reopen)."""
    for h in list(log.handlers):
        log.removeHandler(h)
    log.propagate = False
    log.setLevel(logging.DEBUG if opts.verbose_log else logging.INFO)
    handlers: list[logging.Handler] = []
    if opts.syslog:
        address = "/dev/log"
        if not os.path.exists(address):    # no syslog daemon or journald: logs would vanish
            raise FlowprobeError("--syslog: /dev/log does not exist (no syslog daemon or "
                                 "journald here); use --log-file or stderr", status=2)
        try:
            h = logging.handlers.SysLogHandler(address=address,
                                               facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError as e:
            raise FlowprobeError(os_error_message("connect to syslog (/dev/log)", e))
        h.setFormatter(_SyslogFormatter())
        handlers.append(h)
    if opts.log_file:
        try:
            h = _LogFile(opts.log_file, encoding="utf-8")
        except OSError as e:
            raise FlowprobeError(os_error_message(f"open log file {opts.log_file}", e))
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handlers.append(h)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(message)s"))
    if handlers:                      # errors still reach the terminal / the unit's stderr
        stderr.setLevel(logging.ERROR)
        sys.stderr = _LogWriter()     # other modules print to sys.stderr: route them to the log
    handlers.append(stderr)
    for h in handlers:
        log.addHandler(h)

    def reopen() -> None:
        for h in handlers:
            with h.lock or threading.RLock():
                if isinstance(h, logging.FileHandler):
                    if h.stream is not None:
                        h.stream.close()
                    h.stream = h._open()
                elif isinstance(h, logging.handlers.SysLogHandler):
                    try:
                        h.socket.close()
                        h._connect_unixsocket(h.address) if isinstance(h.address, str) else None
                    except OSError:
                        pass
        log.info("flowprobe: logs reopened (SIGHUP)")
    return reopen


def probe_log(line: str) -> None:
    """The Probe's log hook: every line through logging, at the level its prefix says."""
    log.log(level_of(line), line)


def install_sighup(reopen: Callable[[], None]) -> None:
    # the reopen runs in a thread: it takes the handlers' locks, which the interrupted main
    # thread may hold in the middle of a write
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reopen, daemon=True).start())


# --- pid file and privileges ----------------------------------------------------------------
def write_pid_file(path: str) -> None:
    try:
        with open(path + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(path + ".tmp", path)
    except OSError as e:
        raise FlowprobeError(os_error_message(f"write pid file {path}", e))


def remove_pid_file(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass            # after --user the directory may not be ours; systemd cleans /run


DROPPED_TO: str = ""        # the --user the process runs as, once it changed to it


def drop_privileges(user: str) -> None:
    global DROPPED_TO
    import pwd
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise FlowprobeError(f"--user {user}: no such user", status=2)
    if os.getuid() == pw.pw_uid and os.geteuid() == pw.pw_uid:
        return
    if os.geteuid() != 0:
        raise FlowprobeError(f"--user {user}: only root can change user (running as uid "
                             f"{os.geteuid()})")
    try:
        os.setgroups([])
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        raise FlowprobeError(os_error_message(f"change to user {user}", e))
    if os.getuid() != pw.pw_uid or os.geteuid() != pw.pw_uid:
        raise FlowprobeError(f"--user {user}: could not drop privileges")
    DROPPED_TO = user
    # the rest of the run imports modules as it needs them: the user must be able to read them
    import engine
    for path in (os.path.dirname(engine.__file__),):
        if not os.access(path, os.R_OK | os.X_OK):
            raise FlowprobeError(f"--user {user}: that user cannot read {path} (flowprobe's "
                                 "installation): install flowprobe where it can, e.g. "
                                 "python3 -m venv /opt/flowprobe && /opt/flowprobe/bin/pip "
                                 "install .", status=2)
    log.debug("flowprobe: running as user %s (uid %d, gid %d)", pw.pw_name, pw.pw_uid, pw.pw_gid)
