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


def _spread(row: dict[str, Any], key: str, digits: int = 1) -> str:
    """The median, and the min–max of the runs when there were several."""
    low_high = (row.get("spread") or {}).get(key)
    value = _num(row.get(key), digits)
    if not low_high or len(row.get("runs") or []) < 2:
        return value
    return f"{value} ({_num(low_high[0])}–{_num(low_high[1])})"


def row_cells(row: dict[str, Any]) -> list[str]:
    if row.get("missing"):
        return [row["label"], row.get("alg", "–"), row["missing"], "", "", "", "", ""]
    return [row["label"], row.get("alg", "–"), _spread(row, "ops_per_s"),
            _num(row["p50_ms"], 1), _num(row["p99_ms"], 1), _spread(row, "ops_per_cpu_s"),
            _num(row["redis_per_op"], 1) if row.get("redis_per_op") is not None else "–",
            str(row["errors"])]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


MAIN_HEADER = ["operation", "signing alg", "ops/s", "p50 ms", "p99 ms", "ops per server CPU-s",
               "Redis cmds/op", "errors"]


def main_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(MAIN_HEADER, [row_cells(r) for r in rows if r["server"] == "keycard"])


def pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Keycard row, peer row) for every operation both sides ran, in run order."""
    peers = {tuple(r["pair"]): r for r in rows
             if r["server"] == "peer" and not r.get("missing") and r.get("pair")}
    return [(r, peers[(r["op"], r.get("alg", "–"))]) for r in rows
            if r["server"] == "keycard" and not r.get("missing")
            and (r["op"], r.get("alg", "–")) in peers]


def _ratio(mine: dict[str, Any], theirs: dict[str, Any], key: str) -> str:
    """Ratio of the medians, and the min–max of the paired runs' ratios (run i of each
    side ran back to back)."""
    if not mine.get(key) or not theirs.get(key):
        return "–"
    text = _num(mine[key] / theirs[key], 2)
    paired = [a[key] / b[key] for a, b in zip(mine.get("runs") or [], theirs.get("runs") or [],
                                               strict=False) if a.get(key) and b.get(key)]
    if len(paired) > 1:
        text += f" ({_num(min(paired), 2)}–{_num(max(paired), 2)})"
    return text


def peer_table(rows: list[dict[str, Any]]) -> str | None:
    found = pairs(rows)
    if not found:
        return None
    out = [[kc["label"], f"{kc['alg']} / {peer['alg']}", _spread(kc, "ops_per_s", 0),
            _spread(peer, "ops_per_s", 0), _ratio(kc, peer, "ops_per_s"),
            _spread(kc, "ops_per_cpu_s", 0), _spread(peer, "ops_per_cpu_s", 0),
            _ratio(kc, peer, "ops_per_cpu_s"), _num(peer["p50_ms"], 1), str(peer["errors"])]
           for kc, peer in found]
    return markdown_table(["operation", "alg: Keycard / peer", "Keycard ops/s", "peer ops/s",
                           "Keycard / peer", "Keycard ops/CPU-s", "peer ops/CPU-s",
                           "Keycard / peer (CPU)", "peer p50 ms", "peer errors"], out)


def peer_notes(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, str] = {}
    for _, peer in pairs(rows):
        if peer.get("note"):
            seen.setdefault(peer["label"], peer["note"])
    return [f"- {label}: {note}" for label, note in seen.items()]


def memory_lines(memory: dict[str, Any] | None) -> str:
    if not memory:
        return ""
    return (f"Redis memory per active session: **{memory['bytes_per_session']:,.0f} bytes** "
            f"(`INFO memory` used_memory grew by {memory['used_memory_delta']:,} bytes for "
            f"{memory['sessions']:,} sessions written through `SessionStore.save` into an empty "
            f"database); "
            f"`MEMORY USAGE` of one session record: {memory['memory_usage_session_key']:,} bytes, "
            f"of a person's session index (2 sessions): "
            f"{memory['memory_usage_user_index']:,} bytes.")


def _runs(config: dict[str, Any]) -> str:
    runs = int(config.get("runs", 1))
    if runs < 2:
        return "One run per row."
    return (f"Each figure is the median of {runs} runs, with their min–max in parentheses; "
            "a ratio's range is that of the paired runs.")


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
        f"processes. {_runs(config)}",
        "",
        main_table(result["rows"]),
        "",
    ]
    notes = list(dict.fromkeys(f"- {r['label']}: {r['note']}" for r in result["rows"]
                               if r["server"] == "keycard" and r.get("note")))
    if notes:
        parts += ["Notes on rows:", "", *notes, ""]
    peers = peer_table(result["rows"])
    if peers:
        parts += ["Keycard beside oidc-provider (same machine, same run, each run of a row "
                  "right after Keycard's):", "", peers, "", "What each side does:", "",
                  *peer_notes(result["rows"]), ""]
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
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [r for r in result["rows"] if r["server"] == "keycard" and not r.get("missing")]
    peers = {(kc["op"], kc.get("alg", "–")): peer for kc, peer in pairs(result["rows"])}

    def label(row: dict[str, Any]) -> str:
        alg, peer = row.get("alg", "–"), peers.get((row["op"], row.get("alg", "–")))
        if peer is not None and peer["alg"] != alg:
            return f"{row['label']} ({alg}; peer: {peer['alg']})"
        return row["label"] + (f" ({alg})" if alg != "–" else "")

    labels = [label(r) for r in rows]

    def bars(ax: Any, ys: list[float], chosen: list[dict[str, Any]], key: str, height: float,
             color: str, label: str) -> None:
        values = [r[key] or 0 for r in chosen]
        low = [v - (r.get("spread") or {}).get(key, [v, v])[0] for v, r in zip(
            values, chosen, strict=True)]
        high = [(r.get("spread") or {}).get(key, [v, v])[1] - v for v, r in zip(
            values, chosen, strict=True)]
        ax.barh(ys, values, height=height, color=color, label=label, xerr=[low, high],
                error_kw={"elinewidth": 0.8, "capsize": 2})

    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 1.8), sharey=True)
    for ax, key, title in ((axes[0], "ops_per_s", "operations per second"),
                           (axes[1], "ops_per_cpu_s", "operations per server CPU-second")):
        ys = list(range(len(rows)))
        height = 0.38 if peers else 0.7
        bars(ax, [y - (height / 2 if peers else 0) for y in ys], rows, key, height, "#2b6cb0",
             "Keycard")
        if peers:
            matched = [(y, peers[(r["op"], r.get("alg", "–"))]) for y, r in zip(
                ys, rows, strict=True) if (r["op"], r.get("alg", "–")) in peers]
            bars(ax, [y + height / 2 for y, _ in matched], [p for _, p in matched], key,
                 height, "#dd6b20", "oidc-provider (node)")
        ax.set_title(title)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # shared y axis: once, top to bottom in run order
    axes[0].set_yticks(range(len(rows)), labels)
    axes[0].legend(loc="upper right")
    machine, config = result["machine"], result["config"]
    runs = int(config.get("runs", 1))
    fig.suptitle(f"Keycard, {server_label(config)}, on {machine['nproc']} CPUs, {result['when']}"
                 + (f"; median of {runs} runs, bars: min–max" if runs > 1 else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
