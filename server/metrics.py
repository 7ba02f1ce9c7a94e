"""Prometheus metrics of one sidecar app (own registry, so several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "promptloop_http_requests_total", "HTTP requests answered.", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "promptloop_http_request_seconds",
            "Time to answer an HTTP request.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("promptloop_requests_in_flight", "Requests being answered.", registry=self.registry)
        self.refinements = Counter(
            "promptloop_refinements_total",
            "Refinements returned, by outcome (applied or the fallback reason).",
            ["outcome"],
            registry=self.registry,
        )
        self.generation_latency = Histogram(
            "promptloop_policy_seconds", "Time the policy took per /refine batch.", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "promptloop_refine_batch_size", "Observations per /refine request.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry,
        )
        self.ready = Gauge("promptloop_ready", "1 when the policy is loaded and serving.", registry=self.registry)
        self.rejected = Counter(
            "promptloop_rejected_total", "Requests refused before the policy ran, by reason.", ["reason"],
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
