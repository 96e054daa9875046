"""``/metrics``: the queue in Prometheus' text format, read from the database at each scrape.

Nothing is counted in this process: item counts are queried, and the
per-plugin counters are the table every runner adds to at write-back, so
several dashboards (or none) and any number of runners on any number of
hosts give the same, correctly summed, numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queuecore import Queue, Status

log = logging.getLogger(__name__)

#: Name, type, labels and help of every metric, in the order they are exposed.
#: docs/reference/metrics.md lists the same, and a test keeps the two in step.
METRICS = (
    ("queuecore_up", "gauge", (), "1 when the last scrape read the database, 0 when it failed"),
    ("queuecore_items", "gauge", ("status", "type"), "Items in the queue by status and type"),
    (
        "queuecore_oldest_due_age_seconds",
        "gauge",
        (),
        "Seconds the longest-waiting due item (pending or need_retry) has waited; 0 when none waits",
    ),
    (
        "queuecore_plugin_successes_total",
        "counter",
        ("plugin",),
        "Plugin calls that returned True, summed over every runner",
    ),
    (
        "queuecore_plugin_failures_total",
        "counter",
        ("plugin",),
        "Plugin calls that returned False or raised, summed over every runner",
    ),
    (
        "queuecore_plugin_duration_seconds_total",
        "counter",
        ("plugin",),
        "Seconds spent in the plugin's calls, summed over every runner",
    ),
    ("queuecore_scrape_duration_seconds", "gauge", (), "Seconds this scrape spent querying the database"),
)
_HELP = {name: text for name, _, _, text in METRICS}


class QueueCollector(Collector):
    """Collects from one queue's database on every scrape."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            families = list(self._families())
            up = 1
        except Exception as exc:  # the database is down: say so instead of failing the scrape
            log.warning("metrics: reading the queue failed: %s: %s", type(exc).__name__, exc)
            families = []
            up = 0
        yield GaugeMetricFamily("queuecore_up", _HELP["queuecore_up"], value=up)
        yield from families
        yield GaugeMetricFamily(
            "queuecore_scrape_duration_seconds",
            _HELP["queuecore_scrape_duration_seconds"],
            value=time.perf_counter() - started,
        )

    def _families(self) -> Iterator[Metric]:
        items = GaugeMetricFamily("queuecore_items", _HELP["queuecore_items"], labels=["status", "type"])
        for typ, counts in self.queue.counts_by_type().items():
            for status in Status:
                items.add_metric([status.name.lower(), typ], counts.get(status, 0))
        yield items
        age = self.queue.oldest_due_age()
        yield GaugeMetricFamily(
            "queuecore_oldest_due_age_seconds",
            _HELP["queuecore_oldest_due_age_seconds"],
            value=age or 0.0,
        )
        stats = _plugin_stats(self.queue)
        # prometheus-client appends _total to a counter's name.
        successes = CounterMetricFamily(
            "queuecore_plugin_successes", _HELP["queuecore_plugin_successes_total"], labels=["plugin"]
        )
        failures = CounterMetricFamily(
            "queuecore_plugin_failures", _HELP["queuecore_plugin_failures_total"], labels=["plugin"]
        )
        duration = CounterMetricFamily(
            "queuecore_plugin_duration_seconds", _HELP["queuecore_plugin_duration_seconds_total"], labels=["plugin"]
        )
        for stat in stats:
            successes.add_metric([stat.plugin], stat.successes)
            failures.add_metric([stat.plugin], stat.failures)
            duration.add_metric([stat.plugin], stat.seconds)
        yield successes
        yield failures
        yield duration


def _plugin_stats(queue: Queue) -> list[Any]:
    getter = getattr(queue, "plugin_stats", None)
    return list(getter()) if getter is not None else []


def make_registry(queue: Queue) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one), holding only the queue's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queue))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
