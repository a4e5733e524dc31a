"""Redis topologies of real ``redis-server`` processes on free loopback ports, for tests
that need more than the one server tests/conftest.py starts.

:class:`SentinelTopology`: one master, one replica (``--replicaof``) and three sentinels
(``redis-server <conf> --sentinel``) watching ``mymaster`` with a quorum of 2. Each
sentinel has its own writable config file (sentinels rewrite theirs). Keycard reaches it
with :attr:`SentinelTopology.url` (``redis+sentinel://...``); tests may SIGSTOP/SIGCONT or
stop processes, as long as they put them back.

:class:`ClusterTopology`: six ``--cluster-enabled`` nodes joined by ``redis-cli --cluster
create ... --cluster-replicas 1`` (three masters, a replica each), with a short
``cluster-node-timeout`` so a killed master is replaced within seconds.
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


# -- Redis Cluster ---------------------------------------------------------------------------

CLUSTER_NODE_TIMEOUT_MS = 1000  # failure detection: a killed master is replaced in seconds


def _cluster_node(name: str, workdir: Path, port: int | None = None,
                  bus_port: int | None = None) -> Process:
    """One ``--cluster-enabled`` node in its own directory (its ``nodes.conf`` lives there,
    so a restarted node rejoins with its identity). The bus port is chosen too: the default
    (port + 10000) may be above 65535 for an ephemeral port."""
    port = port or free_port()
    bus_port = bus_port or free_port()
    workdir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--cluster-enabled", "yes",
         "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus_port),
         "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
         # Any replica may take over, however long since it last heard from its master.
         "--cluster-replica-validity-factor", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    return Process(name, port, proc)


def _answers(process: Process, *command: str) -> object:
    try:
        return process.client().execute_command(*command)
    except redis.exceptions.RedisError:
        return None


@dataclass
class ClusterTopology:
    """Six ``redis-server --cluster-enabled yes`` nodes: three masters, one replica each
    (``redis-cli --cluster create ... --cluster-replicas 1``). Keycard reaches it with
    :attr:`url`; :meth:`master_of` finds the master serving a key and :meth:`killed`
    kill -9s a master and puts the node back (as a replica of its successor) afterwards."""

    workdir: Path
    nodes: list[Process] = field(default_factory=list)
    bus_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def client(self) -> redis.cluster.RedisCluster:
        """A cluster client of the tests' own (clean-up, inspection)."""
        live = next(n for n in self.nodes if n.proc.poll() is None)
        return redis.cluster.RedisCluster("127.0.0.1", live.port, decode_responses=True,
                                          socket_timeout=5, socket_connect_timeout=5)

    def node_at(self, port: int) -> Process:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[Process]:
        """The nodes that are masters now (roles change at a failover)."""
        return [n for n in self.nodes if n.proc.poll() is None
                and (_answers(n, "ROLE") or [""])[0] == "master"]

    def master_of(self, key: str) -> Process:
        """The master serving ``key``'s hash slot, as the cluster says now."""
        slot = int(_answers(self.nodes_alive()[0], "CLUSTER", "KEYSLOT", key))  # type: ignore[call-overload]
        for node in self.nodes_alive():
            for start, end, master, *_ in _answers(node, "CLUSTER", "SLOTS") or []:
                if int(start) <= slot <= int(end):
                    return self.node_at(int(master[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def nodes_alive(self) -> list[Process]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok``, knows all six nodes, and every
        replica is in sync with its master."""

        def ok(node: Process) -> bool:
            info = str(_answers(node, "CLUSTER", "INFO") or "")
            return "cluster_state:ok" in info and f"cluster_known_nodes:{len(self.nodes)}" in info

        def synced(node: Process) -> bool:
            replication = _answers(node, "INFO", "replication") or {}
            assert isinstance(replication, dict)
            return (replication.get("role") == "master"
                    or replication.get("master_link_status") == "up")

        for node in self.nodes:
            wait_until(lambda n=node: ok(n) and synced(n), timeout=timeout)

    @contextmanager
    def killed(self, master: Process) -> Iterator[None]:
        """kill -9 ``master``; afterwards start it again on the same ports and directory
        (it rejoins as a replica of the replica that replaced it) and wait until the
        cluster is whole again."""
        index = self.nodes.index(master)
        master.proc.kill()
        master.proc.wait(10)
        try:
            yield
        finally:
            self.nodes[index] = _cluster_node(master.name, self.workdir / master.name,
                                              master.port, self.bus_ports[master.name])
            self.wait_ready()

    def stop(self) -> None:
        for node in self.nodes:
            node.proc.send_signal(signal.SIGCONT)
            node.proc.terminate()
        for node in self.nodes:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(10)


def start_cluster_topology(workdir: Path) -> ClusterTopology:
    """Start six nodes under ``workdir``, join them into a cluster, wait until it serves."""
    topology = ClusterTopology(workdir)
    try:
        for n in range(1, 7):
            name = f"node-{n}"
            bus = free_port()
            topology.bus_ports[name] = bus
            topology.nodes.append(_cluster_node(name, workdir / name, bus_port=bus))
        for node in topology.nodes:
            wait_until(lambda n=node: _answers(n, "PING"), timeout=15)
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in topology.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )
        topology.wait_ready()
    except BaseException:
        topology.stop()
        raise
    return topology
