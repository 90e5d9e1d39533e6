"""API keys and per-key / per-user RPM and TPM limits in Redis (fixed one-minute windows).

One round trip per request (INCR the request counter, read the token counter) and one after it (INCRBY the
tokens from usage). When Redis cannot be reached, ``fail-open`` lets requests through and ``fail-closed``
answers 503; either way ``brixmesh_router_limits_backend_errors_total{policy}`` counts it.

A connection error gets one immediate retry on a fresh connection: after a Redis restart every connection the
pool kept is dead, and each would otherwise fail one request (redis-py's ``from_url`` retries nothing). While
Redis is down the retry's connect is refused at once, so it adds no wait; timeouts are not retried.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from brixmesh.router.http.errors import ApiError

WINDOW_S = 60


class Authenticator:
    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identity(self, authorization: str | None) -> str | None:
        """The caller's key id (a digest, never the key), or None when auth is off; raises 401."""
        if not self._keys:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                "invalid_request_error",
                code="invalid_api_key",
            )
        given = token.strip().encode()
        if not any(hmac.compare_digest(given, key) for key in self._keys):
            raise ApiError(401, "incorrect API key provided", "invalid_request_error", code="invalid_api_key")
        return hashlib.sha256(given).hexdigest()[:16]


class RateLimiter:
    def __init__(self, url: str, rpm: int, tpm: int, policy: str, registry: CollectorRegistry) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.policy = policy
        self._redis = (
            aioredis.Redis.from_url(
                url,
                socket_timeout=0.25,
                socket_connect_timeout=0.25,
                retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
            )
            if url
            else None
        )
        self.backend_errors = Counter(
            "brixmesh_router_limits_backend_errors",
            "Limit checks that could not reach Redis, by policy applied",
            ["policy"],
            registry=registry,
        )
        self.rejections = Counter(
            "brixmesh_router_limits_rejections",
            "Requests rejected by RPM/TPM limits",
            ["limit"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return self._redis is not None and (self.rpm > 0 or self.tpm > 0)

    async def check(self, identities: Sequence[str]) -> None:
        """Count one request for each identity; raise 429 when a limit is exceeded (503 if Redis is down
        under fail-closed)."""
        if not self.enabled or not identities:
            return
        window = int(time.time() // WINDOW_S)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for identity in identities:
                rpm_key = f"brixmesh:limits:{identity}:rpm:{window}"
                pipe.incr(rpm_key)
                pipe.expire(rpm_key, WINDOW_S * 2)
                pipe.get(f"brixmesh:limits:{identity}:tpm:{window}")
            results = await pipe.execute()
        except (RedisError, OSError):
            self.backend_errors.labels(self.policy).inc()
            if self.policy == "fail-closed":
                raise ApiError(
                    503, "rate-limit backend unavailable", "service_unavailable", retry_after_s=1
                ) from None
            return
        retry_after = WINDOW_S - int(time.time()) % WINDOW_S
        for i in range(len(identities)):
            requests, tokens = int(results[3 * i]), int(results[3 * i + 2] or 0)
            if self.rpm and requests > self.rpm:
                self.rejections.labels("rpm").inc()
                raise ApiError(
                    429,
                    f"rate limit reached: {self.rpm} requests per minute",
                    "rate_limit_exceeded",
                    code="rate_limit_exceeded",
                    retry_after_s=retry_after,
                )
            if self.tpm and tokens >= self.tpm:
                self.rejections.labels("tpm").inc()
                raise ApiError(
                    429,
                    f"rate limit reached: {self.tpm} tokens per minute",
                    "rate_limit_exceeded",
                    code="rate_limit_exceeded",
                    retry_after_s=retry_after,
                )

    async def add_tokens(self, identities: Sequence[str], tokens: int) -> None:
        if not self.enabled or not self.tpm or not identities or tokens <= 0:
            return
        window = int(time.time() // WINDOW_S)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for identity in identities:
                key = f"brixmesh:limits:{identity}:tpm:{window}"
                pipe.incrby(key, tokens)
                pipe.expire(key, WINDOW_S * 2)
            await pipe.execute()
        except (RedisError, OSError):
            self.backend_errors.labels(self.policy).inc()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
