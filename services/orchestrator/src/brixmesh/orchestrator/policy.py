"""What a deployment spec may put in an engine's environment and on its command line.

A spec arrives over an admin-token HTTP route, but the token should not be a shell on the host: ``env``
and ``engine_args`` may not load code or redirect where the engine finds its code, libraries or trust roots.
The policy (docs/orchestrator.md, "Spec policy") is a deny list, so that ordinary engine tuning
(``VLLM_*``, ``OMP_*``, ``HF_*``, ``--max-num-seqs``...) needs no change:

- env names: letters, digits and ``_``; never the loader (``LD_*``, ``DYLD_*``, ``GLIBC_TUNABLES``...),
  interpreter (``PYTHON*`` except ``PYTHONHASHSEED``/``PYTHONUNBUFFERED``, ``NODE_OPTIONS``, ``PERL5OPT``...),
  search-path (any name ending in ``PATH``) or trust-root variables, nor the orchestrator's own
  ``BRIXMESH_*``.
- engine args: never a flag that imports code, trusts the model repository's code, reads a config file of
  further flags, lets clients read local files or deserialize tensors, or points TLS at files.

Env values are never shown back: GET answers :data:`REDACTED` for every value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

REDACTED = "<redacted>"
MAX_ENV_VARS = 64
MAX_ENV_VALUE_CHARS = 4096
MAX_ENGINE_ARGS = 256
MAX_ENGINE_ARG_CHARS = 16384

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
DENIED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "BRIXMESH_", "MALLOC_")
ALLOWED_ENV = frozenset({"PYTHONHASHSEED", "PYTHONUNBUFFERED"})
"""Interpreter variables that change no code path: vLLM's prefix-cache hash seed, unbuffered output."""
DENIED_ENV = frozenset({
    "BASH_ENV", "ENV", "IFS", "SHELL", "SHELLOPTS", "PS4", "PROMPT_COMMAND", "HOME", "TMPDIR",
    "GLIBC_TUNABLES", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "LOCALDOMAIN",
    "NODE_OPTIONS", "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYLIB", "RUBYOPT", "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "VIRTUAL_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
})  # fmt: skip
"""Shell start-up, libc, other interpreters' code hooks, trust roots and proxies (traffic redirection)."""

DENIED_ENGINE_FLAGS = {
    "--trust-remote-code": "runs Python code shipped with the model",
    "--worker-cls": "imports a class by name",
    "--worker-extension-cls": "imports a class by name",
    "--middleware": "imports ASGI middleware by name",
    "--tool-parser-plugin": "imports a Python file",
    "--reasoning-parser-plugin": "imports a Python file",
    "--logits-processors": "imports classes by name",
    "--logits-processor-pattern": "lets clients pick logits processors to import",
    "--config": "reads further flags from a file, past this check",
    "--allowed-local-media-path": "lets clients read local files",
    "--enable-prompt-embeds": "deserializes tensors that clients send",
    "--chat-template": "reads a file or runs a template given here; put it in the model directory",
    "--ssl-keyfile": "points TLS at files (the orchestrator probes pods over plain HTTP)",
    "--ssl-certfile": "points TLS at files (the orchestrator probes pods over plain HTTP)",
    "--ssl-ca-certs": "points TLS at files (the orchestrator probes pods over plain HTTP)",
    "--download-dir": "writes outside the orchestrator's state directory",
    "--otlp-traces-endpoint": "sends request traces to a host the spec names",
}


def check_env(env: Mapping[str, str]) -> None:
    """Raise ``ValueError`` naming the first variable the policy refuses."""
    if len(env) > MAX_ENV_VARS:
        raise ValueError(f"at most {MAX_ENV_VARS} variables")
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a variable name (letters, digits and '_', not starting with a digit)"
            )
        if name not in ALLOWED_ENV and (
            name in DENIED_ENV
            or name.upper().endswith("PATH")
            or name.upper().startswith(DENIED_ENV_PREFIXES)
        ):
            raise ValueError(
                f"{name} is not allowed: loader, interpreter, search-path, trust-root, proxy and BRIXMESH_* "
                "variables are refused (docs/orchestrator.md, spec policy)"
            )
        if value == REDACTED:
            raise ValueError(
                f"{name}: {REDACTED!r} is what GET shows instead of the value; send the real value"
            )
        if "\x00" in value or len(value) > MAX_ENV_VALUE_CHARS:
            raise ValueError(f"{name}: value must be at most {MAX_ENV_VALUE_CHARS} characters, without NUL")


def check_engine_args(args: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first argument the policy refuses."""
    if len(args) > MAX_ENGINE_ARGS:
        raise ValueError(f"at most {MAX_ENGINE_ARGS} arguments")
    for arg in args:
        if "\x00" in arg or len(arg) > MAX_ENGINE_ARG_CHARS:
            raise ValueError(f"arguments must be at most {MAX_ENGINE_ARG_CHARS} characters, without NUL")
        flag = arg.split("=", 1)[0].replace("_", "-")
        if not flag.startswith("--") or len(flag) < 4:
            continue
        # argparse also takes unambiguous abbreviations: '--trust-remote' is '--trust-remote-code'
        denied = next((name for name in DENIED_ENGINE_FLAGS if name.startswith(flag)), None)
        if denied is not None:
            raise ValueError(
                f"{denied} is not allowed: it {DENIED_ENGINE_FLAGS[denied]} "
                "(docs/orchestrator.md, spec policy)"
            )


def redacted(env: Mapping[str, str]) -> dict[str, str]:
    return {name: REDACTED for name in env}
