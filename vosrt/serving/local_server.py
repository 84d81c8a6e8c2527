"""Start a ``tritonserver`` on this machine, on 127.0.0.1, for tests and local trials.

The binary is the one the ``nvidia-pytriton`` wheel ships (Triton 2.51 with the Python backend),
installed in the server's own Python environment: a virtual environment made from the system's
Python, whose ``libpython3.11.so`` the backend's stub links (docs/serving.md, "The server's
Python environment"). Production runs NVIDIA's Triton container on the same repository instead.

From a shell (serves until Ctrl-C)::

    python -m vosrt.serving.local_server REPO --env .venv-server --grpc-port 8001
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

SERVER_ENV = "VOSRT_TRITON_ENV"  # the server's Python environment, when not passed
BUILD_HINT = ("build it from the system Python: /usr/bin/python3.11 -m venv ENV && ENV/bin/pip install "
              "'nvidia-pytriton==0.7.0' 'numpy<2' torch==2.13.0 && ENV/bin/pip install --no-deps vosrt "
              "(docs/serving.md)")


def server_distribution(env: str | Path) -> Path:
    """The ``pytriton/tritonserver`` folder of the server environment ``env``; FileNotFoundError if none."""
    found = sorted(Path(env).glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise FileNotFoundError(f"no tritonserver in the server environment {env}: {BUILD_HINT}")
    return found[0].parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """A ``tritonserver`` serving ``repository`` on 127.0.0.1 (free ports unless given), its log
    in ``log``. Use as a context manager, or :meth:`start` and :meth:`stop`."""

    def __init__(self, repository: str | Path, env: str | Path | None = None, *, grpc_port: int | None = None,
                 log: str | Path | None = None):
        env = env or os.environ.get(SERVER_ENV)
        if not env:
            raise FileNotFoundError(f"no server environment: pass one or set {SERVER_ENV}; {BUILD_HINT}")
        self.env = Path(env)
        self.distribution = server_distribution(self.env)
        self.repository = Path(repository)
        self.grpc_port = grpc_port or free_port()
        self.http_port, self.metrics_port = free_port(), free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="vosrt-tritonserver-"))
        self.log = Path(log) if log else self.workdir / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The gRPC address, for ``vosrt.connect``."""
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = self._backends()
        return [str(self.distribution / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={backends}", "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}", "--metrics-address=127.0.0.1",
                f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false", "--exit-timeout-secs=10"]

    def environment(self) -> dict[str, str]:
        """The server's environment: the stub finds the server environment's Python through PATH,
        and the wheel's bundled libraries through LD_LIBRARY_PATH."""
        env = dict(os.environ)
        libs = str(self.distribution.parent.parent / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [env.get("LD_LIBRARY_PATH"), libs]))
        env["PATH"] = f"{self.env / 'bin'}:{env['PATH']}"
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # the client's Python must not leak in
            env.pop(name, None)
        return env

    def start(self, timeout: float = 240.0) -> "LocalServer":
        """Start the server and wait until its models are ready; RuntimeError (with the log's
        end) if it exits or is not ready within ``timeout`` seconds."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with status {self.process.returncode}:\n{self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver was not ready within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the server finishes its calls), then SIGKILL after ``timeout`` seconds; the
        stub processes of its models end with it (one process group)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_group()

    def kill(self) -> None:
        """SIGKILL the server and its model processes at once (a crash)."""
        if self.process is not None:
            self._kill_group()
            self.process.wait()

    def metrics(self) -> str:
        """The metrics endpoint's text (Prometheus format)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            return answer.read().decode()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _backends(self) -> Path:
        """The backend folder with the Python backend's stub for Python 3.11 beside it (the wheel
        keeps the stubs apart, one per Python version)."""
        backends = self.workdir / "backends"
        if not backends.exists():
            shutil.copytree(self.distribution / "backends", backends)
            stub = self.distribution / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
            shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False


def main(argv: list[str] | None = None) -> None:
    """Serve a repository on 127.0.0.1 until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m vosrt.serving.local_server",
                                     description="Serve a vosrt export-triton repository with the tritonserver of "
                                                 "the server's Python environment, on 127.0.0.1, until Ctrl-C.")
    parser.add_argument("repository")
    parser.add_argument("--env", help=f"the server's Python environment (default: ${SERVER_ENV})")
    parser.add_argument("--grpc-port", type=int, default=8001)
    args = parser.parse_args(argv)
    with LocalServer(args.repository, args.env, grpc_port=args.grpc_port) as server:
        print(f"serving {args.repository} at {server.url} (metrics: http://127.0.0.1:{server.metrics_port}/metrics, "
              f"log: {server.log}); Ctrl-C stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
