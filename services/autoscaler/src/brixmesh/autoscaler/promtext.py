"""A small, fast reader of the Prometheus text format that keeps only the series a flavour asks for.

Engines export hundreds of series (python_*, process_*, http_*, _created); the autoscaler needs about a
dozen. Lines are filtered on the flavour prefix before anything is split, and label sets of one series
are summed (data-parallel engines export one label set per engine rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brixmesh.autoscaler.flavors import Flavor


class MetricsParseError(ValueError):
    """The body is not Prometheus text (for example an HTML error page)."""


@dataclass(slots=True)
class RawScrape:
    """Sums over label sets: gauges and counters by name, histograms as ``{le: cumulative count}``."""

    flavor: str
    gauges: dict[str, float] = field(default_factory=dict)
    gauge_sets: dict[str, int] = field(default_factory=dict)
    """How many label sets each gauge had, so ratios such as KV usage can be averaged instead of summed."""
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, dict[float, float]] = field(default_factory=dict)

    def gauge(self, names: tuple[str, ...], *, mean: bool = False) -> float | None:
        for name in names:
            if name in self.gauges:
                value = self.gauges[name]
                return value / self.gauge_sets[name] if mean else value
        return None

    def counter(self, names: tuple[str, ...]) -> float | None:
        for name in names:
            if name in self.counters:
                return self.counters[name]
        return None

    def histogram(self, names: tuple[str, ...]) -> dict[float, float] | None:
        for name in names:
            if name in self.histograms:
                return self.histograms[name]
        return None


def parse(text: str, flavor: Flavor) -> RawScrape:
    gauges, counters, histograms = flavor.gauges, flavor.counters, flavor.histograms
    scrape = RawScrape(flavor=flavor.name)
    prefix = flavor.prefix
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            close = line.rfind("}")
            labels = line[brace + 1 : close]
            rest = line[close + 1 :]
        else:
            name, _, rest = line.partition(" ")
            labels = ""
        value_text = rest.split()
        if not value_text:
            raise MetricsParseError(f"sample without value: {line[:120]!r}")
        try:
            value = float(value_text[0])
        except ValueError:
            raise MetricsParseError(f"bad sample value: {line[:120]!r}") from None
        if name in gauges:
            scrape.gauges[name] = scrape.gauges.get(name, 0.0) + value
            scrape.gauge_sets[name] = scrape.gauge_sets.get(name, 0) + 1
        elif name in counters:
            scrape.counters[name] = scrape.counters.get(name, 0.0) + value
        elif name.endswith("_bucket") and name[:-7] in histograms:
            buckets = scrape.histograms.setdefault(name[:-7], {})
            le = _bucket_bound(labels, line)
            buckets[le] = buckets.get(le, 0.0) + value
    if not scrape.gauges:
        raise MetricsParseError(f"no {flavor.name} engine gauges in the response")
    return scrape


def _bucket_bound(labels: str, line: str) -> float:
    start = labels.find('le="')
    if start < 0:
        raise MetricsParseError(f"histogram bucket without le label: {line[:120]!r}")
    end = labels.find('"', start + 4)
    try:
        return float(labels[start + 4 : end])  # float("+Inf") is inf
    except ValueError:
        raise MetricsParseError(f"bad le label: {line[:120]!r}") from None
