"""Start pipeline ranks as real processes on loopback, and always stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """`world` processes of `python -m contsup train ...`, with torchrun's environment variables."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, world: int, args: list[str]) -> list[subprocess.Popen]:
        """Launch every rank; returns the processes (stdout and stderr piped, text)."""
        port = free_port()
        for rank in range(world):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "contsup", "train", *args], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        return self.procs[-world:]

    def finish(self, timeout: float) -> list[tuple[int, str, str]]:
        """(exit code, stdout, stderr) of every rank started since the last call; one still running after
        `timeout` s fails the test."""
        out = []
        for rank, p in enumerate(self.procs):
            try:
                stdout, stderr = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail(f"rank {rank} still running after {timeout} s")
            out.append((p.returncode, stdout, stderr))
        self.procs = []
        return out

    def stop(self) -> None:
        """Kill and reap every rank that is still alive."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.fixture
def ranks() -> Iterator[Ranks]:
    """Processes started through it are killed and reaped when the test ends, whatever happened."""
    r = Ranks()
    try:
        yield r
    finally:
        r.stop()
