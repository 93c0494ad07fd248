"""Prometheus metrics of the captioning server (`GET /metrics`).

Written with `prometheus_client` (already installed with orbax-checkpoint)
into a registry of the server's own, so only these series are exported:

  aac_serve_requests_total{status}     responses to POST /caption by HTTP status
  aac_serve_errors_total{reason}       refusals by reason (too_large, silent_audio, ...)
  aac_serve_request_seconds            latency of POST /caption (histogram)
  aac_serve_batch_size                 windows per model call (histogram)
  aac_serve_batch_seconds              time per model call (histogram)
  aac_serve_queued_windows             windows waiting for a batch (gauge)
"""

from collections.abc import Callable

import prometheus_client

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
  """The server's counters and histograms."""

  def __init__(self, max_batch: int):
    """Creates them in a registry of their own.

    Args:
      max_batch: the largest batch (the batch-size buckets are powers of two up to it).
    """
    self.registry = prometheus_client.CollectorRegistry()
    registry = self.registry
    self._requests = prometheus_client.Counter(
      'aac_serve_requests', 'POST /caption responses by status', ['status'], registry=registry
    )
    self._errors = prometheus_client.Counter(
      'aac_serve_errors', 'refused or failed requests by reason', ['reason'], registry=registry
    )
    self._latency = prometheus_client.Histogram(
      'aac_serve_request_seconds',
      'POST /caption latency',
      buckets=_LATENCY_BUCKETS,
      registry=registry,
    )
    sizes = sorted({min(1 << i, max_batch) for i in range(max_batch.bit_length() + 1)})
    self._batch = prometheus_client.Histogram(
      'aac_serve_batch_size', 'windows per model call', buckets=sizes, registry=registry
    )
    self._batch_time = prometheus_client.Histogram(
      'aac_serve_batch_seconds',
      'seconds per model call',
      buckets=_LATENCY_BUCKETS,
      registry=registry,
    )
    self._queued = prometheus_client.Gauge(
      'aac_serve_queued_windows', 'windows waiting for a batch', registry=registry
    )

  def request(self, status: int, seconds: float) -> None:
    """Counts one response."""
    self._requests.labels(status=str(status)).inc()
    self._latency.observe(seconds)

  def error(self, reason: str) -> None:
    """Counts one refusal."""
    self._errors.labels(reason=reason).inc()

  def batch(self, size: int, seconds: float) -> None:
    """Counts one model call (`DynamicBatcher`'s `on_batch`)."""
    self._batch.observe(size)
    self._batch_time.observe(seconds)

  def queue_size(self, read: Callable[[], int]) -> None:
    """Reads the queue length at each scrape."""
    self._queued.set_function(read)

  def text(self) -> bytes:
    """The Prometheus text exposition."""
    return prometheus_client.generate_latest(self.registry)
