"""What the bench measures besides the load generator: server CPU from /proc, Redis stats."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's workers), from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


@dataclass
class CpuSnapshot:
    per_pid: dict[int, float]

    @property
    def total(self) -> float:
        return sum(self.per_pid.values())


def process_tree_cpu(root: int) -> CpuSnapshot:
    """CPU of a server: the root (gunicorn's or granian's main process, or node) and all its
    descendants (workers, and whatever they spawn)."""
    pids = [root]
    for pid in pids:  # grows while iterating: breadth-first over the tree
        pids.extend(children(pid))
    return CpuSnapshot({pid: cpu_seconds(pid) for pid in pids})


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> tuple[float, list[int]]:
    """Seconds spent between two snapshots, and pids seen only once (a worker restarted:
    its CPU is partly lost, which the report flags)."""
    changed = sorted(set(before.per_pid) ^ set(after.per_pid))
    spent = sum(after.per_pid[p] - before.per_pid.get(p, 0.0) for p in after.per_pid)
    return spent, changed


def command_calls(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}; our own INFO calls are left out."""
    stats = client.info("commandstats")
    calls = {}
    for name, value in stats.items():
        command = name.removeprefix("cmdstat_")
        if command != "info":
            calls[command] = int(value["calls"])
    return calls


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {k: after[k] - before.get(k, 0) for k in after}
    return {k: v for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v}


@dataclass
class Snapshot:
    cpu: CpuSnapshot
    calls: dict[str, int]


def snapshot(root: int, client: redis.Redis | None) -> Snapshot:
    return Snapshot(process_tree_cpu(root), command_calls(client) if client else {})


def diff(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    spent, changed = cpu_delta(before.cpu, after.cpu)
    commands = command_delta(before.calls, after.calls)
    return {"cpu_seconds": spent, "pids_changed": changed, "redis_commands": commands,
            "redis_total": sum(commands.values())}


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def session_memory(sessions: Any, client: redis.Redis, prefix: str, count: int) -> dict[str, Any]:
    """Redis memory per active session: ``count`` sessions written exactly as Keycard writes
    them (``SessionStore.save``), copied from a real signed-in session's dict and profile.

    They go into database 1 of the bench's own Redis, empty, through a ``SessionStore`` like
    Keycard's: in database 0, after the other rows, Redis's key table could double in the
    middle of the probe (1 MiB and more for the tens of thousands of codes and tokens the
    run left), and the figure was then that table's, not the sessions'."""
    import json

    from sso.sessions import DATA, PROFILE, SEP, UA, ServerSession, SessionStore
    from sso.storage import Store

    template = None
    for key in client.scan_iter(match=f"{prefix}*", count=1000):  # prefix: "<p>sess:"
        if client.type(key) not in (b"string", "string"):
            continue
        raw = client.get(key)
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        parts = value.split(SEP)
        if len(parts) == 7 and parts[PROFILE]:
            template = parts
            break
    if template is None:
        raise RuntimeError("no signed-in session to copy: run the sign-in operation first")
    data, profile, agent = json.loads(template[DATA]), json.loads(template[PROFILE]), template[UA]
    pool = client.connection_pool.connection_kwargs
    client = redis.Redis(host=pool.get("host", "127.0.0.1"), port=pool.get("port", 6379), db=1,
                         decode_responses=True)
    client.flushdb()
    sessions = SessionStore(Store(client, sessions.store.keys.prefix), idle=sessions.idle,
                            absolute=sessions.absolute)
    before = used_memory(client)
    sid = ""
    for i in range(count):
        session = ServerSession(dict(data))
        session.set_profile(str(90_000_000 + i // 2), profile)  # two sessions per person
        sid = sessions.save(session, ip="127.0.0.1", user_agent=agent) or sid
    after = used_memory(client)
    sample = client.memory_usage(sessions.key(sid), samples=0)
    index = client.memory_usage(sessions.store.keys.user_sessions(str(90_000_000 + (count - 1)
                                                                      // 2)), samples=0)
    return {"sessions": count, "used_memory_delta": after - before,
            "bytes_per_session": (after - before) / count, "memory_usage_session_key": sample,
            "memory_usage_user_index": index, "value_bytes": len(SEP.join(template))}
