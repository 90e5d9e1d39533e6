"""Request shapes: (input length, output length) in power-of-two buckets, shared by the router's stats,
the GPU profiles and the autoscaler's optimizer so that all three count the same cells.

Bucket ``i`` holds lengths in ``(2**(i-1), 2**i]`` (bucket 0 holds 0 and 1). ``MAX_BUCKET`` caps the index
so a histogram has at most ``(MAX_BUCKET + 1) ** 2`` cells whatever clients send.
"""

from __future__ import annotations

GPU_LABEL = "brixmesh.io/gpu"
"""Pod label naming the pod's GPU type (a deployment label, so every pod of the deployment carries it)."""

MAX_BUCKET = 20
"""2**20 tokens: longer prompts or outputs share the last bucket."""


def length_bucket(tokens: int) -> int:
    if tokens <= 1:
        return 0
    return min(MAX_BUCKET, (tokens - 1).bit_length())


def bucket_tokens(bucket: int) -> int:
    """The largest length in ``bucket``: the length a profile measures it at (its worst case)."""
    return 1 << bucket
