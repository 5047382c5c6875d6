"""Prometheus metrics of one control plane (own registry, so several planes can share a
process in tests)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "edgeflux_cloud_rpc_total",
            "gRPC calls by method and status",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgeflux_cloud_rpc_seconds",
            "gRPC handler latency",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.watchers = Gauge(
            "edgeflux_cloud_watchers", "open WatchFleet streams", registry=self.registry
        )
        self.timestamp_expiry = Gauge(
            "edgeflux_cloud_tuf_timestamp_expiry_seconds",
            "Unix time at which the TUF timestamp expires",
            registry=self.registry,
        )
        self.ingest_dropped = Counter(
            "edgeflux_cloud_ingest_dropped_total",
            "MQTT messages ingest dropped (and quarantined) by reason",
            ["reason"],
            registry=self.registry,
        )
        self._http: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks one)."""
        self._http, self._thread = start_http_server(port, host, registry=self.registry)
        self.port = int(self._http.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
