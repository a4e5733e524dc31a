"""Redis topologies of real ``redis-server`` processes on free loopback ports, for tests
that need more than the one server tests/conftest.py starts.

:class:`SentinelTopology`: one master, one replica (``--replicaof``) and three sentinels
(``redis-server <conf> --sentinel``) watching ``mymaster`` with a quorum of 2. Each
sentinel has its own writable config file (sentinels rewrite theirs). Keycard reaches it
with :attr:`SentinelTopology.url` (``redis+sentinel://...``); tests may SIGSTOP/SIGCONT or
stop processes, as long as they put them back.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import free_port, wait_until

SERVICE = "mymaster"


@dataclass
class Process:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, decode_responses=True,
                           socket_timeout=5, socket_connect_timeout=5)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the process (it keeps its port, accepts connections, answers nothing),
        SIGCONT it afterwards whatever happens."""
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)


def _redis(name: str, workdir: Path, *extra: str) -> Process:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return Process(name, port, proc)


def _sentinel(name: str, workdir: Path, master_port: int) -> Process:
    port = free_port()
    conf = workdir / f"{name}.conf"
    conf.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f"dir {workdir}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 5000\n"
    )
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Process(name, port, proc)


@dataclass
class SentinelTopology:
    master: Process
    replica: Process
    sentinels: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    @property
    def processes(self) -> list[Process]:
        return [self.master, self.replica, *self.sentinels]

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the replica is in sync and every sentinel names the master."""

        def answers(process: Process, *command: str) -> object:
            try:
                return process.client().execute_command(*command)
            except redis.exceptions.RedisError:
                return None

        wait_until(lambda: (answers(self.replica, "INFO", "replication") or {})
                   .get("master_link_status") == "up", timeout=timeout)
        for sentinel in self.sentinels:
            wait_until(lambda s=sentinel: answers(s, "SENTINEL", "get-master-addr-by-name",
                                                  SERVICE), timeout=timeout)

    def stop(self) -> None:
        for process in self.processes:
            process.proc.send_signal(signal.SIGCONT)
            process.proc.terminate()
        for process in self.processes:
            try:
                process.proc.wait(10)
            except subprocess.TimeoutExpired:
                process.proc.kill()
                process.proc.wait(10)


def start_sentinel_topology(workdir: Path) -> SentinelTopology:
    """Start the five processes under ``workdir`` and wait until the topology answers."""
    (workdir / "master").mkdir()
    (workdir / "replica").mkdir()
    master = _redis("master", workdir / "master")
    topology = SentinelTopology(master, master)
    try:
        topology.replica = _redis("replica", workdir / "replica",
                                  "--replicaof", "127.0.0.1", str(master.port))
        for n in range(1, 4):
            topology.sentinels.append(_sentinel(f"sentinel-{n}", workdir, master.port))
        topology.wait_ready()
    except BaseException:
        topology.stop()
        raise
    return topology
