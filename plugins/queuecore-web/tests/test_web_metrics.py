"""/metrics: Prometheus text, item gauges, and plugin counters summed over runners."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from queuecore import Queue, Runner, hookimpl

from queuecore_web import metrics


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_metrics_endpoint(web):
    p = web.populated
    r = web.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = _samples(r.text)
    assert s[("queuecore_up", ())] == 1
    items = {labels: v for (name, labels), v in s.items() if name == "queuecore_items"}
    assert items[(("status", "error"), ("type", "mail"))] == len(p.bounced)
    assert items[(("status", "need_retry"), ("type", "doc"))] == len(p.broken)
    assert items[(("status", "in_progress"), ("type", "mail"))] == 1
    by_status: dict[str, float] = {}
    for labels, v in items.items():
        by_status[dict(labels)["status"]] = by_status.get(dict(labels)["status"], 0) + v
    assert by_status == p.expected_counts()
    assert s[("queuecore_oldest_due_age_seconds", ())] >= 0
    assert s[("queuecore_plugin_successes_total", (("plugin", "mailer"),))] == 3
    assert s[("queuecore_plugin_failures_total", (("plugin", "mailer"),))] == 5
    assert s[("queuecore_plugin_failures_total", (("plugin", "indexer"),))] == 1
    assert s[("queuecore_plugin_duration_seconds_total", (("plugin", "indexer"),))] >= 0
    assert s[("queuecore_scrape_duration_seconds", ())] >= 0


def test_every_declared_metric_is_exposed_with_its_type(web):
    text = web.client.get("/metrics").text
    types = _types(text)
    for name, kind, labels, _ in metrics.METRICS:
        family = name[: -len("_total")] if kind == "counter" else name
        assert types.get(family) == kind, name
        assert f"# HELP {name} " in text, name


def test_plugin_counters_add_up_over_runners(tmp_path):
    """Two runners (two processes' worth of counters) on one database: the scrape sums them."""

    class Ok:
        @hookimpl
        def process_item(self, item):
            return True

    url = f"sqlite:///{tmp_path / 'q.db'}"
    q = Queue(url)
    q.enqueue_many([("t", {"n": i}) for i in range(10)])
    for name in ("host-a", "host-b"):
        runner = Runner(Queue(url), {"ok": Ok()}, name=name)
        runner.process_batch(5)
        runner.close()
    s = _samples(metrics.render(metrics.make_registry(q)).decode())
    assert s[("queuecore_plugin_successes_total", (("plugin", "ok"),))] == 10
    assert s[("queuecore_plugin_failures_total", (("plugin", "ok"),))] == 0


def test_database_down_reports_up_zero(tmp_path):
    q = Queue(f"sqlite:///{tmp_path / 'q.db'}")
    q.init()
    q.close()
    q.database.init(str(tmp_path / "no-such-folder" / "q.db"))
    s = _samples(metrics.render(metrics.make_registry(q)).decode())
    assert s[("queuecore_up", ())] == 0
    assert not [k for k in s if k[0] == "queuecore_items"]


def test_empty_queue(queue):
    s = _samples(metrics.render(metrics.make_registry(queue)).decode())
    assert s[("queuecore_up", ())] == 1
    assert s[("queuecore_oldest_due_age_seconds", ())] == 0
