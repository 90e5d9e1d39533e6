"""Prefix-cache block hashing exactly as vLLM 0.32 computes and publishes it.

A block hash is a chain over FULL blocks only::

    d_0 = H((NONE_HASH, tuple(tokens_0), extra_0))
    d_i = H((d_{i-1},   tuple(tokens_i), extra_i))

- ``H`` is chosen by ``--prefix-caching-hash-algo``: ``sha256`` (pickle protocol 5, then SHA-256),
  ``sha256_cbor`` (canonical CBOR, then SHA-256), ``xxhash`` (pickle, then XXH3-128) or ``xxhash_cbor``
  (canonical CBOR, then XXH3-128).
- ``NONE_HASH = H(seed)``: seed is the ``PYTHONHASHSEED`` string when that variable is set; otherwise
  ``"vllm-none-hash"`` for the SHA-256 variants and a random per-process string for the xxhash variants
  (their seed must stay secret because they are not collision resistant).
- ``extra_i`` is ``None`` or a tuple of *tagged* keys, in order ``("lora", name, path)`` (every block),
  then ``("cache_salt", salt)`` (first block only). Events publish them *untagged*: a LoRA block's
  ``extra_keys`` entry is ``["<adapter name>"]``.
- Published form of a digest: with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`` unset or ``1`` the low 64 bits
  as an unsigned int (``int.from_bytes(digest, "big") & (2**64 - 1)``, i.e. the last 8 bytes), with ``0``
  the raw digest bytes.

Public API: :class:`BlockHasher` (``digest``, ``hash_block``, ``hash_blocks``, ``external``,
``none_hash``), :func:`resolve_none_hash_seed`, :func:`block_extra_keys`, :func:`published_extra_keys`,
:func:`use_int_block_hashes_from_env`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import cbor2
import xxhash

HashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
HASH_ALGOS: tuple[str, ...] = get_args(HashAlgo)

DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
_NON_CRYPTO_ALGOS = frozenset({"xxhash", "xxhash_cbor"})
_U64_MASK = (1 << 64) - 1

ExtraKeys = tuple[tuple[Any, ...], ...]
ExternalBlockHash = int | bytes


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _cbor(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xxh3_128(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


_DIGESTS: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], bytes]]] = {
    "sha256": (_pickle, _sha256),
    "sha256_cbor": (_cbor, _sha256),
    "xxhash": (_pickle, _xxh3_128),
    "xxhash_cbor": (_cbor, _xxh3_128),
}


def resolve_none_hash_seed(algo: HashAlgo, environ: Mapping[str, str] | None = None) -> str:
    """The seed vLLM 0.32 derives NONE_HASH from: PYTHONHASHSEED wins, else a fixed or random default."""
    env = os.environ if environ is None else environ
    seed = env.get("PYTHONHASHSEED")
    if seed is not None:
        return seed
    if algo in _NON_CRYPTO_ALGOS:
        return os.urandom(32).hex()
    return DEFAULT_NONE_HASH_SEED


def use_int_block_hashes_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`` (default ``1``), parsed as vLLM does (an integer flag)."""
    env = os.environ if environ is None else environ
    raw = env.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1")
    try:
        return bool(int(raw))
    except ValueError:
        raise ValueError(f"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES must be 0 or 1, got {raw!r}") from None


def block_extra_keys(
    block_index: int, lora_name: str | None, lora_path: str | None, cache_salt: str | None
) -> ExtraKeys | None:
    """Tagged extra keys hashed into block ``block_index`` of a request (None when there are none)."""
    keys: list[tuple[Any, ...]] = []
    if lora_name is not None:
        keys.append(("lora", lora_name, lora_path))
    if cache_salt and block_index == 0:
        keys.append(("cache_salt", cache_salt))
    return tuple(keys) if keys else None


def published_extra_keys(extra: ExtraKeys | None) -> list[Any] | None:
    """Untagged form events carry: ``("lora", name, path)`` -> ``name``, ``("cache_salt", s)`` -> ``s``."""
    if extra is None:
        return None
    out: list[Any] = []
    for key in extra:
        tag = key[0]
        if tag == "lora" or tag == "cache_salt":
            out.append(key[1])
        else:
            raise ValueError(f"unknown extra key tag {tag!r}")
    return out


class BlockHasher:
    """Chained block hashes for one engine process (one NONE_HASH)."""

    __slots__ = ("_hash", "_serialize", "algo", "none_hash", "seed", "use_int_hashes")

    def __init__(
        self,
        algo: HashAlgo = "sha256",
        *,
        seed: str | None = None,
        use_int_hashes: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``seed``/``use_int_hashes`` left as None follow vLLM's environment rules (from ``environ``)."""
        if algo not in _DIGESTS:
            raise ValueError(
                f"unknown prefix caching hash algo {algo!r}; expected one of {', '.join(HASH_ALGOS)}"
            )
        self.algo: HashAlgo = algo
        self._serialize, self._hash = _DIGESTS[algo]
        self.seed = resolve_none_hash_seed(algo, environ) if seed is None else seed
        self.use_int_hashes = (
            use_int_block_hashes_from_env(environ) if use_int_hashes is None else use_int_hashes
        )
        self.none_hash = self.digest(self.seed)

    def digest(self, obj: Any) -> bytes:
        """``H(obj)`` for this algorithm."""
        return self._hash(self._serialize(obj))

    def hash_block(
        self, parent: bytes | None, tokens: Sequence[int], extra: ExtraKeys | None = None
    ) -> bytes:
        """Digest of one full block; ``parent`` None means the first block of a sequence."""
        return self._hash(self._serialize((parent or self.none_hash, tuple(tokens), extra)))

    def hash_blocks(
        self,
        token_ids: Sequence[int],
        block_size: int,
        *,
        parent: bytes | None = None,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
        first_block_index: int = 0,
    ) -> list[bytes]:
        """Digests of every full block of ``token_ids`` (a trailing partial block is ignored).

        ``first_block_index``/``parent`` continue an existing chain: ``token_ids`` then starts at block
        ``first_block_index`` of the request and ``parent`` is the digest of the block before it.
        """
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        out: list[bytes] = []
        for start in range(0, len(token_ids) - block_size + 1, block_size):
            index = first_block_index + start // block_size
            extra = block_extra_keys(index, lora_name, lora_path, cache_salt)
            parent = self.hash_block(parent, token_ids[start : start + block_size], extra)
            out.append(parent)
        return out

    def external(self, digest: bytes) -> ExternalBlockHash:
        """The form a digest takes in KV events (low 64 bits as int, or the raw bytes)."""
        if self.use_int_hashes:
            return int.from_bytes(digest, "big") & _U64_MASK
        return digest
