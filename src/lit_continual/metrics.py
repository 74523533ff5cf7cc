"""The Prometheus endpoint (`metrics.port`, `metrics.host`): the run's health as numbers.

A custom collector reads the Status object at scrape time: nothing is recorded between
scrapes, and the "seconds since" gauges are computed from the status timestamps at each
scrape, so they keep growing while training hangs (a stuck process that still answers HTTP is
visible). A private registry holds only this run's metrics and the process's own
(`process_*`: CPU, memory, start time), never what other libraries register globally.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime

from omegaconf import DictConfig
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from lit_continual import __version__
from lit_continual.config import ConfigError
from lit_continual.status import STATES, Status

log = logging.getLogger("lit_continual")

PREFIX = "lit_continual_"
RATE_WINDOW_SECONDS = 60.0  # steps/s is the mean over (at least) the last minute of scrapes
# Status counter field -> (metric name; the exposition adds `_total`, help text).
COUNTERS = {
    "files_done": ("files_done", "Files trained to their end in this run (from the ledger)."),
    "files_failed": ("files_failed", "Files moved to failed/ in this run."),
    "files_skipped": ("files_skipped", "Files skipped by an operator (moved to skipped/) in this run."),
    "nonfinite_steps": ("nonfinite_steps", "Optimizer steps skipped because the loss or a gradient "
                                           "was not finite, in this run."),
}


class StepRate:
    """Steps per second from the global step seen at successive scrapes.

    Keeps the scrapes of the last `window` seconds plus the newest one before it, so the rate
    is the mean over at least the window, and falls to 0 once steps stop.
    """

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()  # two scrapes may run at once (one thread per request)

    def observe(self, t: float, step: int) -> float | None:
        """Record `step` at time `t`; the rate since the oldest kept sample, or None (one sample)."""
        with self._lock:
            if self._samples and (step < self._samples[-1][1] or t < self._samples[-1][0]):
                self._samples.clear()  # the step or the clock went back: start over
            self._samples.append((t, step))
            while len(self._samples) > 2 and self._samples[1][0] <= t - self.window:
                self._samples.popleft()
            t0, step0 = self._samples[0]
        return (step - step0) / (t - t0) if t > t0 else None


class StatusCollector(Collector):
    """Turns the Status fields into metrics at every scrape."""

    def __init__(self, status: Status, clock: Callable[[], float] = time.time) -> None:
        self.status = status
        self.clock = clock  # wall time (the status timestamps are UTC wall time)
        self.rate = StepRate()

    def collect(self) -> Iterator[Metric]:
        fields = dict(self.status.fields)  # one consistent copy (a C-level copy under the GIL)
        now = self.clock()
        yield InfoMetricFamily("lit_continual", "The lit-continual version serving this endpoint.",
                               value={"version": __version__})
        state = GaugeMetricFamily(PREFIX + "status", "1 for the daemon's current status, 0 for the others.",
                                  labels=["status"])
        for name in STATES:
            state.add_metric([name], float(fields.get("status") == name))
        yield state
        step = int(fields.get("current_step") or 0)
        # Only steps trained by this process count: the jump to the resumed step is not a rate.
        rate = self.rate.observe(now, step) if fields.get("last_step_at") else None
        yield _gauge("global_step", "Optimizer steps of the whole run (continues across files and restarts).", step)
        yield _gauge("steps_per_second", "Optimizer steps per second over about the last minute "
                     "(absent before the first step of this process).", rate)
        yield _gauge("tokens_per_second", "Tokens trained per second over the last logging window "
                     "(logging.every_n_steps).", fields.get("tokens_per_second"))
        yield _gauge("loss", "Mean training loss over the last logging window.", fields.get("loss"))
        yield _gauge("learning_rate", "Learning rate of the last logged optimizer step.", fields.get("learning_rate"))
        yield _gauge("eval_loss", "Mean token loss on DIR/eval/*.jsonl at the newest evaluation (absent before "
                     "the first).", fields.get("eval_loss"))
        yield _gauge("queue_files", "Files waiting in the inbox (claimed but not started included, "
                     "the file in training not).", fields.get("batch_queue_size"))
        yield _gauge("warnings", "Standing warnings in the status file.", len(fields.get("warnings") or []))
        yield _gauge("snapshots", "Snapshots kept in snapshots/ (snapshot.keep_days prunes them).",
                     fields.get("snapshots"))
        yield _gauge("seconds_since_last_step", "Seconds since this process finished an optimizer step "
                     "(computed at scrape time; absent before its first step).",
                     _seconds_since(fields.get("last_step_at"), now))
        yield _gauge("seconds_since_last_checkpoint", "Seconds since this process wrote a checkpoint "
                     "(computed at scrape time; absent before its first checkpoint).",
                     _seconds_since(fields.get("last_checkpoint_at"), now))
        for field, (name, documentation) in COUNTERS.items():
            yield CounterMetricFamily(PREFIX + name, documentation, value=float(fields.get(field) or 0))


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """A gauge family; no sample when the value is unknown (absent rather than a made-up 0)."""
    family = GaugeMetricFamily(PREFIX + name, documentation)
    if value is not None:
        family.add_metric([], float(value))
    return family


def _seconds_since(stamp: str | None, now: float) -> float | None:
    if not stamp:
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return None


class MetricsServer:
    """The HTTP endpoint's server and thread; `stop()` closes the port."""

    def __init__(self, server, thread: threading.Thread, host: str, port: int) -> None:
        self._server, self._thread = server, thread
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(settings: DictConfig, status: Status) -> MetricsServer | None:
    """Start the endpoint (None if `metrics.port` is null); its port goes into the status.

    Raises ConfigError (exit 2) if it cannot listen there, before any training: a port taken by
    another process does not free itself, and restarting would only fail the same way.
    """
    if settings.port is None:
        return None
    registry = CollectorRegistry()
    registry.register(StatusCollector(status))
    ProcessCollector(registry=registry)
    try:
        server, thread = start_http_server(int(settings.port), addr=str(settings.host), registry=registry)
    except OSError as err:
        raise ConfigError(_why(settings, err)) from err
    metrics = MetricsServer(server, thread, str(settings.host), server.server_port)
    status.update(metrics_port=metrics.port, write=True)
    log.info("Metrics on %s", metrics.url)
    return metrics


def _why(settings: DictConfig, err: OSError) -> str:
    where = f"metrics.host={settings.host} metrics.port={settings.port}"
    if err.errno == errno.EADDRINUSE:
        return (f"{where}: the port is already in use (another daemon's endpoint?); choose a free port, "
                f"0 for any free one, or null to turn the endpoint off")
    return f"{where}: cannot listen there: {err.strerror or err}"
