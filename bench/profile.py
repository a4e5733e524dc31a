"""``python -m bench.profile OP [OP...]``: py-spy on Keycard's worker processes while wrk
drives one operation; prints the functions with the most samples (self and inclusive).
Needs py-spy (``.venv/bin/pip install py-spy``) and ptrace rights (root, or
kernel.yama.ptrace_scope=0)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from bench import ops
from bench.run import Bench, parse

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` → ``pkg/mod.py:func``."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{m['func']}"


def summarise(raw: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [short(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and
                  not f.startswith("thread ")]
        n = int(count)
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{total} samples", "", "self (leaf) time:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("ops", nargs="+", choices=["signin", "client_credentials", "introspection",
                                              "userinfo", "jwks", "forward_auth_session",
                                              "forward_auth_bearer"])
    p.add_argument("--seconds", type=int, default=12)
    p.add_argument("--top", type=int, default=15)
    args, rest = p.parse_known_args(argv)
    if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    bench = Bench(parse(["--no-docs", *rest]))
    try:
        bench.start()
        kc = bench.keycard.url
        spec = bench.single_specs()
        for op in args.ops:
            raw = bench.workdir / f"profile-{op}.txt"
            if op == "signin":
                bench.load.duration = args.seconds + 2
                load = threading.Thread(target=ops.run_signins,
                                        args=(kc, bench.upstream.url, bench.rp, bench.load))
            else:
                s = spec[op]([])
                ops.run_wrk(kc, s, bench.load, duration=2)  # warm up
                load = threading.Thread(target=ops.run_wrk, args=(kc, s, bench.load),
                                        kwargs={"duration": args.seconds + 2})
            load.start()
            subprocess.run([pyspy, "record", "--pid", str(bench.keycard.pid), "--subprocesses",
                            "--duration", str(args.seconds), "--rate", "250", "--gil",
                            "--format", "raw", "--output", str(raw)],
                           capture_output=True, check=True)
            load.join()
            print(f"\n== {op} (py-spy --gil: samples holding the GIL, Keycard workers, "
                  f"{args.seconds} s) ==")
            print(summarise(raw, args.top))
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
