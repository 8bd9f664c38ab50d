"""Serving a browser UI (MLflow's, Optuna's dashboard) as a child process until Ctrl-C or SIGTERM.

The server runs in its own process group, so stopping it (Ctrl-C or SIGTERM here, which the child does not
see) ends it and any workers it forked (MLflow's uvicorn workers outlive a killed parent otherwise), and
never leaves a server behind.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mtbench.errors import MtbenchError, Terminated


def base_url(host: str, port: int) -> str:
    """http://host:port (an IPv6 host in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def check_port_free(host: str, port: int) -> None:
    """Fail with a user error when something listens on host:port (checked as the server will bind it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR: so a port held only by closed connections (TIME_WAIT) counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise MtbenchError(f"port {port} on {host} is in use (another UI or server?); pick another with "
                                   f"--port, e.g. --port {port + 1}.") from None
            raise MtbenchError(f"cannot serve on {host}:{port} ({err.strerror}); check --port.") from None


def wait_until_serving(proc: subprocess.Popen, name: str, probe: str, timeout_s: float) -> None:
    """Poll `probe` (a page that reads the store) until it answers 200; fail if the server exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise MtbenchError(f"{name} exited with code {code} before it answered on {probe} (its output is "
                               "above); check the store and the port (--port).")
        try:
            with urllib.request.urlopen(probe, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise MtbenchError(f"{name} did not answer on {probe} within {timeout_s:.0f} s.")
        time.sleep(0.25)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End the server's process group: SIGTERM, then SIGKILL for whatever is left after `grace_s`."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc.pid, signal.SIGKILL)  # a server that hung, or a worker it forked that outlived it
    proc.wait()


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group is empty already
        pass


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` here (as under the CLI), so the server is stopped, not orphaned.

    Signal handlers can only be set from the main thread; elsewhere the caller's handling stays as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(cmd: list[str], *, name: str, host: str, port: int, probe: str, ready: Callable[[], None] | None = None,
          timeout_s: float = 120.0) -> int:
    """Run server `cmd` on host:port until Ctrl-C or SIGTERM; `ready()` once `probe` answers. Returns 130 after
    Ctrl-C, 143 after SIGTERM, or the server's own code if it stops by itself."""
    check_port_free(host, port)
    with sigterm_raises():
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            wait_until_serving(proc, name, probe, timeout_s)
            if ready is not None:
                ready()
            return proc.wait()
        except KeyboardInterrupt as err:
            return 143 if isinstance(err, Terminated) else 130
        finally:
            stop(proc)
