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


def _redis(name: str, workdir: Path, *extra: str, avoid: int = 0) -> Process:
    port = free_port()
    while port == avoid:
        port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir),
         # A replica (re)joining syncs at once, not after the 5 s diskless-sync delay.
         "--repl-diskless-sync-delay", "0", *extra],
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


def _fields(reply: object) -> dict[str, str]:
    """A SENTINEL REPLICAS entry (a flat list, or a dict from newer redis-py) as a dict."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    items = list(reply) if isinstance(reply, list) else []
    return {str(k): str(v) for k, v in zip(items[::2], items[1::2], strict=False)}


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

    def wait_replica(self, timeout: float) -> None:
        """Until the replica's link to the master is up (it has synced)."""

        def linked() -> bool:
            assert self.replica.proc.poll() is None, f"{self.replica.name} exited"
            try:
                info = self.replica.client().info("replication")
            except redis.exceptions.RedisError:
                return False
            return bool(info.get("master_link_status") == "up"
                        and info.get("master_port") == self.master.port)

        wait_until(linked, timeout=timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the replica is in sync and every sentinel names the master, lists the
        replica and knows its two peers."""

        def answers(process: Process, *command: str) -> object:
            try:
                return process.client().execute_command(*command)
            except redis.exceptions.RedisError:
                return None

        self.wait_replica(timeout)

        def knows_everyone(sentinel: Process) -> bool:
            """Names the master, sees the replica up, and knows the other sentinels (a
            failover needs the replica; a kill needs the quorum)."""
            if self.master_known_to(sentinel) != self.master.port:
                return False
            replicas = answers(sentinel, "SENTINEL", "REPLICAS", SERVICE) or []
            peers = answers(sentinel, "SENTINEL", "SENTINELS", SERVICE) or []
            # Flags "slave" alone: no s_down, no disconnected. The replica's own link is
            # checked above; a sentinel's copy of it is refreshed only every 10 s.
            return len(peers) == len(self.sentinels) - 1 and any(
                _fields(r).get("port") == str(self.replica.port)
                and _fields(r).get("flags") == "slave" for r in replicas)

        for sentinel in self.sentinels:
            wait_until(lambda s=sentinel: knows_everyone(s), timeout=timeout)

    def master_known_to(self, sentinel: Process) -> int | None:
        """The master's port as ``sentinel`` names it, or None if it does not answer."""
        try:
            _, port = sentinel.client().execute_command(
                "SENTINEL", "get-master-addr-by-name", SERVICE)
        except (redis.exceptions.RedisError, TypeError, ValueError):
            return None
        return int(port)

    def _wait_switched(self, timeout: float) -> None:
        """Until every sentinel names the replica as master; then swap the roles here."""
        wait_until(lambda: all(self.master_known_to(s) == self.replica.port
                               for s in self.sentinels), timeout=timeout, interval=0.02)
        self.master, self.replica = self.replica, self.master

    def sync_roles(self) -> None:
        """Name master and replica as the sentinels do now (a test that failed half-way,
        or Sentinel acting on its own, may have swapped them)."""
        if self.master_known_to(self.sentinels[0]) == self.replica.port:
            self.master, self.replica = self.replica, self.master
        self.wait_ready()

    def failover(self, timeout: float = 15.0) -> None:
        """``SENTINEL FAILOVER``: the replica becomes master, the master its replica."""
        self.sync_roles()
        # Not a sentinel in TILT mode (one that was SIGSTOPped a moment ago stays in it for
        # 30 s and acts on nothing): the first that is not.
        steady = next(s for s in self.sentinels
                      if int(s.client().info("sentinel").get("sentinel_tilt", 0)) == 0)
        steady.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        self._wait_switched(timeout)

    def restart(self, node: Process) -> None:
        """A fresh process for ``node``, on its port with its config: a sentinel that was
        SIGSTOPped sits in TILT mode for 30 s after, acting on nothing."""
        node.proc.kill()
        node.proc.wait(10)
        node.proc = subprocess.Popen(node.proc.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: self.master_known_to(node) is not None, timeout=15)
        self.wait_ready()

    def rejoin(self) -> None:
        """After :meth:`failover`: make the former master the new one's replica now, as
        Sentinel would (after its ~10 s role-change grace), and wait until whole."""
        self.replica.client().execute_command("REPLICAOF", "127.0.0.1", str(self.master.port))
        self.wait_ready()

    def kill_master(self, timeout: float = 20.0) -> None:
        """kill -9 the master, wait until the sentinels promoted the replica, then start
        the dead one again as the new master's replica (roles swapped; call
        :meth:`wait_ready` for the topology to be whole again)."""
        self.sync_roles()
        dead = self.master
        dead.proc.kill()
        dead.proc.wait(10)
        self._wait_switched(timeout)
        workdir = Path(dead.proc.args[dead.proc.args.index("--dir") + 1])  # type: ignore[index, union-attr]
        # On a new port: under load, a client socket may have taken the dead one's port
        # as its local port. The sentinels learn the new replica from the master; they keep
        # the dead address listed as down, which no failover picks.
        self.replica = _redis(dead.name, workdir, "--replicaof", "127.0.0.1",
                              str(self.master.port), avoid=dead.port)

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
        # Replica in sync first: the sentinels then learn it from the master's first INFO,
        # not from the next one, ten seconds later.
        topology.wait_replica(20.0)
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
