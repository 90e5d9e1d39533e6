"""brixbench: workloads, a streaming client, a simulated fleet and the side-by-side runner.

Data flow: ``workloads`` (what to send) + ``arrivals`` (when) -> ``client`` (sends, times every chunk, scrapes
the engines) -> ``stats`` (TTFT/ITL/TPOT/E2E, throughput, goodput) -> ``report`` (JSON, Markdown, PNG).
``compare`` runs the same workload through every ``contenders`` entry against one ``fleet``.
"""
