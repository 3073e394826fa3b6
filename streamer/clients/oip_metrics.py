"""``streamer_remote_*``: what the remote-model clients did, read at each scrape.

Labels ``server`` (``host:port`` of ``model.remote_url``) and ``model`` (the
model's path on it, ``name`` or ``name/versions/v``): a fixed set per configuration.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streamer.clients.oip import LATENCY_BUCKETS, all_clients
from streamer.core.models.oip import OUTCOMES


class RemoteCollector(Collector):
    """Requests by outcome, retries, latency, in-flight requests and the breaker, per model."""

    def collect(self) -> Iterator[Metric]:
        """Yield the remote families."""
        requests = CounterMetricFamily(
            "streamer_remote_requests",
            "Inference requests to the model server by outcome: ok, bad_input (400/413/422: "
            "the batch is bisected), timeout, connection, http_429, http_4xx, http_5xx.",
            labels=["server", "model", "outcome"],
        )
        retries = CounterMetricFamily(
            "streamer_remote_retries",
            "Requests sent again after a transient failure (backoff with jitter).",
            labels=["server", "model"],
        )
        latency = HistogramMetricFamily(
            "streamer_remote_request_seconds",
            "Time of one inference request, from sending to the whole answer.",
            labels=["server", "model"],
        )
        in_flight = GaugeMetricFamily(
            "streamer_remote_in_flight_requests",
            "Requests sent and not answered yet (at most model.max_concurrent_requests).",
            labels=["server", "model"],
        )
        waiting = GaugeMetricFamily(
            "streamer_remote_waiting_requests",
            "Requests waiting for a free slot of model.max_concurrent_requests.",
            labels=["server", "model"],
        )
        breaker = GaugeMetricFamily(
            "streamer_remote_breaker_open",
            "1 while the model server is down and the pipeline waits for it (readiness false).",
            labels=["server", "model"],
        )
        opened = CounterMetricFamily(
            "streamer_remote_breaker_opened",
            "Times the circuit breaker opened (outages of the model server).",
            labels=["server", "model"],
        )
        for client in all_clients():
            label = [client.server, client.label]
            stats = client.stats
            for outcome in OUTCOMES:
                requests.add_metric([*label, outcome], stats.outcomes[outcome])
            retries.add_metric(label, stats.retries)
            cumulative = [
                (str(bound), count)
                for bound, count in zip(LATENCY_BUCKETS, stats.latency_buckets, strict=True)
            ]
            cumulative.append(("+Inf", stats.latency_count))
            latency.add_metric(label, cumulative, stats.latency_sum)
            in_flight.add_metric(label, stats.in_flight)
            waiting.add_metric(label, stats.waiting)
            breaker.add_metric(label, 1.0 if client.breaker.is_open else 0.0)
            opened.add_metric(label, client.breaker.opened)
        yield from (requests, retries, latency, in_flight, waiting, breaker, opened)
