"""Scrapes every engine's ``/metrics`` concurrently with a short timeout and normalizes the result.

A failed scrape (timeout, refused, non-200, unparsable body) yields ``stale=True`` metrics: the previous
values are never republished as if they were fresh.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from brixmesh.autoscaler.derive import PodMetricsDeriver
from brixmesh.autoscaler.flavors import detect_flavor
from brixmesh.autoscaler.promtext import MetricsParseError, parse
from brixmesh.common.messages import PodInfo, PodMetrics


class Scraper:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout_s: float = 0.2,
        rate_window_s: float = 2.0,
        quantile_window_s: float = 10.0,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.rate_window_s = rate_window_s
        self.quantile_window_s = quantile_window_s
        self.failures = 0
        self.scrapes = 0
        self._derivers: dict[str, PodMetricsDeriver] = {}

    def _deriver(self, pod: PodInfo) -> PodMetricsDeriver:
        deriver = self._derivers.get(pod.pod)
        if deriver is None or deriver.pod.metrics_url != pod.metrics_url:
            deriver = self._derivers[pod.pod] = PodMetricsDeriver(
                pod, rate_window_s=self.rate_window_s, quantile_window_s=self.quantile_window_s
            )
        return deriver

    async def scrape(self, pod: PodInfo) -> PodMetrics:
        deriver = self._deriver(pod)
        self.scrapes += 1
        try:
            response = await self.client.get(pod.metrics_url, timeout=self.timeout_s)
            now = time.time()
            if response.status_code != 200:
                raise MetricsParseError(f"HTTP {response.status_code}")
            text = response.text
            return deriver.update(parse(text, detect_flavor(text)), now)
        except (httpx.HTTPError, MetricsParseError):
            self.failures += 1
            return deriver.stale(time.time())

    async def scrape_all(self, pods: list[PodInfo]) -> list[PodMetrics]:
        live = {p.pod for p in pods}
        for gone in self._derivers.keys() - live:
            del self._derivers[gone]
        return list(await asyncio.gather(*(self.scrape(p) for p in pods)))
