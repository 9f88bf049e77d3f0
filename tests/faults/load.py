"""A submit load through the API for the failover tests (Sentinel, Cluster), every answer recorded with
its time, so a test counts acknowledged jobs and measures how long clients were refused; and a poller
reading those jobs back, so a test sees whether any job's shown end changed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

PAYLOAD = orjson.dumps({"data": [[5.9, 3.0, 4.2, 1.5]]})


@dataclass
class SubmitLoad:
    """Threads submitting jobs as fast as the API answers, each answer recorded with its time."""

    base: str
    threads: int = 4
    answers: list[tuple[float, int, str]] = field(default_factory=list)  # (when, status, job id or detail)
    stopping: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> SubmitLoad:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._submit, daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _submit(self) -> None:
        with httpx.Client(base_url=self.base, timeout=20) as http:
            while not self.stopping.is_set():
                try:
                    response = http.post("/predict", content=PAYLOAD, headers={"Content-Type": "application/json"})
                except httpx.TimeoutException:
                    self.answers.append((time.monotonic(), 0, "client timeout: a hang"))
                    continue
                except httpx.TransportError as exc:  # the API itself is gone: a failure too
                    self.answers.append((time.monotonic(), 0, f"API unreachable: {exc!r}"))
                    time.sleep(0.1)
                    continue
                body = response.json()
                self.answers.append((time.monotonic(), response.status_code, body.get("job_id") or str(body)))
                if response.status_code == 503:
                    time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._workers:
            thread.join(30)

    def acknowledged(self) -> list[str]:
        return [detail for _, status, detail in self.answers if status == 202]

    def statuses(self) -> Counter[int]:
        return Counter(status for _, status, _ in self.answers)


class StatePoller:
    """Reads acknowledged jobs through the API over and over, remembering every (status, result) seen."""

    def __init__(self, base: str, load: SubmitLoad) -> None:
        self.base, self.load = base, load
        self.seen: dict[str, list[tuple[str, str]]] = {}  # (status, result JSON)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        with httpx.Client(base_url=self.base, timeout=20) as http:
            while not self.stopping.is_set():
                for job_id in self.load.acknowledged()[-40:]:
                    try:
                        response = http.get(f"/job/{job_id}")
                    except httpx.TransportError:
                        time.sleep(0.1)  # the load's own answers show whether the API was reachable
                        continue
                    if response.status_code == 200:
                        view = response.json()
                        self.seen.setdefault(job_id, []).append((view["status"], orjson.dumps(view.get("result")).decode()))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)

    def went_backwards(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Jobs shown ended and later not, or ended with two different results."""
        terminal = {"completed", "failed", "canceled", "expired"}
        wrong = []
        for job_id, views in self.seen.items():
            first_end = next((i for i, (status, _) in enumerate(views) if status in terminal), None)
            if first_end is not None and len(set(views[first_end:])) > 1:
                wrong.append((job_id, views))
        return wrong


def serve_under_load(
    processes: Any, env: dict[str, str], load_threads: list[SubmitLoad | StatePoller], workers: int = 2
) -> tuple[SubmitLoad, StatePoller]:
    """An API and `workers` workers on `env`, a submit load through the API and a poller reading its jobs
    (both stopped by the `load_threads` fixture when the test ends)."""
    _, base = processes.api(env)
    for _ in range(workers):
        processes.worker(env)
    load = SubmitLoad(base).start()
    poller = StatePoller(base, load)
    load_threads += [load, poller]
    return load, poller
