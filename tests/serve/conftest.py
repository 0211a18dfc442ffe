"""Real `diffembed serve` processes for the HTTP tests, started once per session.

The servers (plain, API-key, short connection timeouts) are launched together so their model loads
overlap; each fixture then waits for its own /health. Servers are killed at session end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "s3cret-test-key"
# Small limits so 413 paths are cheap to reach; documented in the test module that relies on them.
PLAIN_ARGS = ["--max-inputs", "64", "--max-body-bytes", str(1 << 20), "--max-documents", "4",
              "--max-chunks", "20", "--max-tokens-per-document", "400", "--batch-wait-ms", "5"]
# Short connection deadlines, so idle and slow clients are cut off within test time (test_connections.py).
TIMEOUT_ARGS = ["--keep-alive-timeout", "1", "--body-timeout", "2"]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path) -> Server:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "diffembed", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *args]
    handle = log.open("w")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    handle.close()
    return Server(f"http://127.0.0.1:{port}", proc, log)


@pytest.fixture(scope="session")
def _servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    key_file = root / "api-key.txt"
    key_file.write_text(f"  {API_KEY}\n")  # surrounding whitespace must be stripped
    servers = {
        "plain": launch(PLAIN_ARGS, root / "plain.log"),
        "auth": launch(["--api-key-file", str(key_file)], root / "auth.log"),
        "timeouts": launch(TIMEOUT_ARGS, root / "timeouts.log"),
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def server(_servers) -> Server:
    _servers["plain"].wait_ready()
    return _servers["plain"]


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def auth_server(_servers) -> Server:
    _servers["auth"].wait_ready()
    return _servers["auth"]


@pytest.fixture(scope="session")
def timeouts_server(_servers) -> Server:
    _servers["timeouts"].wait_ready()
    return _servers["timeouts"]
