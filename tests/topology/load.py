"""A steady load on Keycard for the failover tests: a few threads repeat small journeys
and record each answer, so a test can tell which failed, how, and for how long.

Each step returns ``"ok"``, or a wrong-answer label (``"WRONG ..."``: something allowed
that should be refused, or data that vanished), or the HTTP status of an error; a
connection refused or timed out is ``"conn"``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

Step = Callable[[requests.Session], str]


@dataclass
class Outcome:
    at: float  # time.monotonic()
    step: str
    result: str  # "ok", "WRONG ...", an HTTP status, or "conn"


@dataclass
class Load:
    """Threads running ``steps`` round-robin until stopped."""

    steps: dict[str, Step]
    threads: int = 3
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, offset: int) -> None:
        names = list(self.steps)
        n = offset
        with requests.Session() as http:
            http.trust_env = False
            while not self._stop.is_set():
                name = names[n % len(names)]
                n += 1
                try:
                    result = self.steps[name](http)
                except requests.RequestException:
                    result = "conn"
                    http.close()
                self.outcomes.append(Outcome(time.monotonic(), name, result))

    def __enter__(self) -> Load:
        for offset in range(self.threads):
            worker = threading.Thread(target=self._run, args=(offset,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(15)

    def count(self, since: float = 0.0) -> int:
        return sum(1 for o in self.outcomes if o.at >= since)

    def wait_for(self, n: int, since: float, timeout: float = 20.0) -> None:
        """Until ``n`` answers came after ``since``, successful or not."""
        deadline = time.monotonic() + timeout
        while self.count(since) < n:
            assert time.monotonic() < deadline, f"the load made {self.count(since)} requests"
            time.sleep(0.02)

    def failures(self, since: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.at >= since and o.result != "ok"]

    def report(self, title: str, fault_at: float) -> Report:
        after = [o for o in self.outcomes if o.at >= fault_at]
        failed = [o for o in after if o.result != "ok"]
        by_result = Counter(o.result for o in failed)
        by_step = Counter(f"{o.step}: {o.result}" for o in failed)
        recovered = max((o.at for o in failed), default=fault_at) - fault_at
        report = Report(title, len(after), dict(by_result), recovered, dict(by_step))
        print(report.line())
        return report


@dataclass
class Report:
    title: str
    requests: int
    errors: dict[str, int]  # result -> count
    recovered_after: float  # seconds from the fault to the last failed request
    by_step: dict[str, int]  # "step: result" -> count

    def line(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"\n[{self.title}] {self.requests} requests after the fault; errors: {errors};"
                f" last error {self.recovered_after:.2f} s after the fault"
                + "".join(f"\n    {k}: {v}" for k, v in sorted(self.by_step.items())))

    @property
    def wrong(self) -> int:
        """Answers that were wrong, not merely unavailable."""
        return sum(n for result, n in self.errors.items() if result != "503")
