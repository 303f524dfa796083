"""Running MLflow's UI server for ``opplan ui`` (docs/operations.md, "The MLflow UI").

Lean on a small machine: one worker, and MLflow's job runner (its GenAI scorers' queue,
several consumer processes) off. The server runs in its own process group, so that
stopping ``opplan ui`` stops every process MLflow started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from opplan.errors import OpplanError

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # MLflow 3: no job runner (huey consumers)


def check_port(host: str, port: int) -> None:
    """Raise :class:`OpplanError` (one line) when ``port`` is not a port or is taken on ``host``."""
    if not 1 <= port <= 65535:
        raise OpplanError(f"--port {port} is not a TCP port (1-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OpplanError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no clash
        try:
            probe.bind(address)
        except OSError as exc:
            raise OpplanError(f"port {port} on {host} is not free ({exc.strerror}); pick another with --port, "
                              f"e.g. --port {port + 1 if port < 65535 else 5001}") from None


def server_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow server`` in opplan's own interpreter (``mlflow`` need not be on PATH)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
            "--port", str(port), "--workers", "1"]


def start(uri: str, host: str, port: int) -> subprocess.Popen:
    """The server, started in a new process group."""
    return subprocess.Popen(server_command(uri, host, port), env={**os.environ, **LEAN_ENV}, start_new_session=True)


def wait_until_up(process: subprocess.Popen, url: str, *, timeout: float) -> None:
    """Return once ``url`` answers; raise :class:`OpplanError` when the server exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise OpplanError(f"the MLflow server exited with status {process.returncode} before answering "
                              "(its messages are above)")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise OpplanError(f"the MLflow server did not answer {url} within {timeout:.0f} s")
        time.sleep(0.5)


def stop(process: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    group = process.pid  # start_new_session: the server leads its own group
    _signal(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(group, process) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(group, process):
        _signal(group, signal.SIGKILL)
    process.wait()


def _signal(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group: int, process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader, so that a finished one does not count
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
