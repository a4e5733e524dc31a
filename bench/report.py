"""The bench's output: a table on stdout, results JSON, docs/benchmarks.md and its chart."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def server_label(config: dict[str, Any]) -> str:
    """How Keycard was served, in words (results from before ``--server`` were gunicorn)."""
    if config.get("server", "gunicorn") == "granian":
        return (f"granian (WSGI), {config['workers']} workers × {config['threads']} "
                "blocking threads")
    return (f"gunicorn, {config['workers']} workers × `{config['worker_class']}`, "
            f"{config['threads']} threads")


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def row_cells(row: dict[str, Any]) -> list[str]:
    if row.get("missing"):
        return [row["label"], row["missing"], "", "", "", "", ""]
    return [row["label"], _num(row["ops_per_s"], 1), _num(row["p50_ms"], 1),
            _num(row["p99_ms"], 1), _num(row["ops_per_cpu_s"], 1),
            _num(row["redis_per_op"], 1) if row.get("redis_per_op") is not None else "–",
            str(row["errors"])]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


MAIN_HEADER = ["operation", "ops/s", "p50 ms", "p99 ms", "ops per server CPU-s",
               "Redis cmds/op", "errors"]


def main_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(MAIN_HEADER, [row_cells(r) for r in rows if r["server"] == "keycard"])


def peer_table(rows: list[dict[str, Any]]) -> str | None:
    peers = {r["op"]: r for r in rows if r["server"] == "peer" and not r.get("missing")}
    if not peers:
        return None
    out = []
    for row in rows:
        peer = peers.get(row["op"]) if row["server"] == "keycard" else None
        if peer is None or row.get("missing"):
            continue
        out.append([row["label"], _num(row["ops_per_s"], 1), _num(peer["ops_per_s"], 1),
                    _num(row["ops_per_s"] / peer["ops_per_s"], 2) if peer["ops_per_s"] else "–",
                    _num(row["ops_per_cpu_s"], 1), _num(peer["ops_per_cpu_s"], 1),
                    _num(row["ops_per_cpu_s"] / peer["ops_per_cpu_s"], 2)
                    if peer["ops_per_cpu_s"] else "–", _num(peer["p50_ms"], 1),
                    str(peer["errors"])])
    return markdown_table(["operation", "Keycard ops/s", "peer ops/s", "Keycard / peer",
                           "Keycard ops/CPU-s", "peer ops/CPU-s", "Keycard / peer (CPU)",
                           "peer p50 ms", "peer errors"], out)


def memory_lines(memory: dict[str, Any] | None) -> str:
    if not memory:
        return ""
    return (f"Redis memory per active session: **{memory['bytes_per_session']:,.0f} bytes** "
            f"(`INFO memory` used_memory grew by {memory['used_memory_delta']:,} bytes for "
            f"{memory['sessions']:,} sessions written through `SessionStore.save`); "
            f"`MEMORY USAGE` of one session record: {memory['memory_usage_session_key']:,} bytes, "
            f"of a person's session index (2 sessions): "
            f"{memory['memory_usage_user_index']:,} bytes.")


def render(result: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md."""
    machine, config = result["machine"], result["config"]
    parts = [
        f"Measured {result['when']} with `{result['command']}`.",
        "",
        f"Machine: {machine['nproc']} CPUs, {machine['cpu']}; Python {machine['python']}, "
        f"{machine['redis']}, node {machine['node']}, wrk {machine['wrk']}, "
        f"oidc-provider {machine['peer_version']}.",
        "",
        f"Keycard: {server_label(config)}; load: wrk "
        f"{config['wrk_threads']} threads × {config['connections']} connections, "
        f"{config['duration']:g} s per operation; sign-in: {config['signin_procs']} driver "
        "processes.",
        "",
        main_table(result["rows"]),
        "",
    ]
    notes = [f"- {r['label']}: {r['note']}" for r in result["rows"] if r.get("note")]
    if notes:
        parts += ["Notes on rows:", "", *notes, ""]
    peers = peer_table(result["rows"])
    if peers:
        parts += ["Keycard beside oidc-provider (same machine, same run):", "", peers, ""]
    elif result.get("peer_note"):
        parts += [f"Peer: {result['peer_note']}", ""]
    if result.get("memory"):
        parts += [memory_lines(result["memory"]), ""]
    parts.append("![throughput per operation](benchmarks.png)")
    return "\n".join(parts)


def print_summary(result: dict[str, Any]) -> None:
    print()
    print(main_table(result["rows"]))
    peers = peer_table(result["rows"])
    if peers:
        print("\nKeycard beside oidc-provider:\n" + peers)
    elif result.get("peer_note"):
        print(f"\nPeer: {result['peer_note']}")
    if result.get("memory"):
        print("\n" + memory_lines(result["memory"]))
    for row in result["rows"]:
        if row.get("sample"):
            print(f"\n{row['label']} ({row['server']}): first unexpected answer: {row['sample']}")


def write_docs(result: dict[str, Any], doc: Path) -> None:
    generated = f"{BEGIN}\n{render(result)}\n{END}"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: generated, text,
                  flags=re.S)
    doc.write_text(text)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["server"] == "keycard" and not r.get("missing")]
    peers = {r["op"]: r for r in result["rows"] if r["server"] == "peer" and not r.get("missing")}
    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.8), sharey=True)
    for ax, key, title in ((axes[0], "ops_per_s", "operations per second"),
                           (axes[1], "ops_per_cpu_s", "operations per server CPU-second")):
        ys = list(range(len(rows)))
        height = 0.38 if peers else 0.7
        ax.barh([y - (height / 2 if peers else 0) for y in ys], [r[key] for r in rows],
                height=height, color="#2b6cb0", label="Keycard")
        if peers:
            pys = [y + height / 2 for y, r in zip(ys, rows, strict=True) if r["op"] in peers]
            vals = [peers[r["op"]][key] for r in rows if r["op"] in peers]
            ax.barh(pys, vals, height=height, color="#dd6b20", label="oidc-provider (node)")
        ax.set_title(title)
        ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # shared y axis: once, top to bottom in run order
    axes[0].set_yticks(range(len(rows)), labels)
    axes[0].legend(loc="upper right")
    machine, config = result["machine"], result["config"]
    fig.suptitle(f"Keycard, {server_label(config)}, on {machine['nproc']} CPUs, {result['when']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
