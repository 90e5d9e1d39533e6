"""Who may publish what on the bus: one NATS user per service, with publish permissions derived from the
subjects each service owns (:mod:`brixmesh.common.subjects`). Subscribing stays open to every user: the
bus carries no prompts, and ``brixmesh tap`` must see everything.

- Only the orchestrator publishes ``pods.*`` (announcements; the ``pods.list`` request is everyone's) and
  ``deployments.status.*``.
- Only the adapter-manager publishes ``adapters.placements`` (the ``adapters.list`` request is everyone's).
- Only kv-index publishes ``kv.events.*`` / ``kv.snapshots.*``; only the autoscaler ``metrics.pods.*``,
  ``scale.decisions.*`` and ``gpu.plans.*``; only routers ``router.*``.
- Every service publishes its own ``mesh.heartbeat.<service>``, replies on ``_INBOX.>``, and requests
  ``pods.list``; services that use JetStream get its API (``$JS.API.>``, acks, flow control).
- The ``cli`` user (``brixmesh status``/``tap``/``top``/``profile``) pings, lists pods, reads, and publishes GPU
  profiles.
- Only the gpu-doctor publishes ``gpu.decisions.*``.
- A KV tier node publishes only its heartbeat (its blocks reach routers as engines' ``CPU`` KV events).

``brixmesh up`` renders this into nats-server's config with generated passwords;
``python -m brixmesh.common.nats_auth`` prints the same config with ``$<SERVICE>_NATS_PASSWORD`` variables,
which is ``deploy/nats/nats.conf`` (compose and Kubernetes; a test keeps them equal), and
``python -m brixmesh.common.nats_auth --env`` prints fresh secrets in ``.env`` form (compose's ``.env``, the
Kubernetes ``brixmesh-secrets`` Secret).
"""

from __future__ import annotations

import json
import secrets
import sys

from brixmesh.common.subjects import (
    ADAPTERS_LIST, ADAPTERS_PLACEMENTS, DEPLOYMENTS_STATUS, GPU_DECISIONS, GPU_PLANS, GPU_PROFILES, KV_EVENTS,
    KV_SNAPSHOTS, MESH_HEARTBEAT, MESH_PING, METRICS_PODS, PODS, PODS_LIST, ROUTER_ROUTING, ROUTER_STATS,
    SCALE_DECISIONS, Subject,
)  # fmt: skip

CLI_USER = "cli"
SERVICE_USERS = (
    "orchestrator", "kv-index", "autoscaler", "router", "adapter-manager", "gpu-doctor", "kv-tier",
)  # fmt: skip
INBOXES = "_INBOX.>"
JETSTREAM = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>")


def _owned(*subjects: Subject) -> list[str]:
    return [subject.pattern() for subject in subjects]


OWNED_SUBJECTS: dict[str, list[str]] = {
    "orchestrator": [PODS.template.split(".")[0] + ".>", *_owned(DEPLOYMENTS_STATUS), *JETSTREAM],
    "kv-index": [*_owned(KV_EVENTS, KV_SNAPSHOTS), *JETSTREAM],
    "autoscaler": [*_owned(METRICS_PODS, SCALE_DECISIONS, GPU_PLANS), *JETSTREAM],
    "router": [*_owned(ROUTER_STATS, ROUTER_ROUTING), *JETSTREAM],
    "adapter-manager": _owned(ADAPTERS_PLACEMENTS),
    "gpu-doctor": _owned(GPU_DECISIONS),
    "kv-tier": [],
}
"""Beyond what every service may publish. ``pods.>`` covers every :data:`PODS` kind."""


def publish_allowed(user: str) -> list[str]:
    if user == CLI_USER:
        return [MESH_PING.template, PODS_LIST.template, GPU_PROFILES.pattern(), INBOXES]
    own = [MESH_HEARTBEAT.format(service=user), PODS_LIST.template, ADAPTERS_LIST.template, INBOXES]
    return own + OWNED_SUBJECTS[user]


def generate_passwords() -> dict[str, str]:
    """A fresh password per user (services and the cli). Letters and digits only, starting with a letter:
    nats-server parses a ``$VARIABLE``'s value as a config value, and must read it as a plain string."""
    return {user: "p" + secrets.token_hex(24) for user in (*SERVICE_USERS, CLI_USER)}


def server_config(passwords: dict[str, str]) -> str:
    """nats-server's ``authorization`` block; a password may be a ``$VARIABLE`` the server resolves from its
    environment (written unquoted, as nats-server requires)."""
    lines = ["authorization {", "  users = ["]
    for user in (*SERVICE_USERS, CLI_USER):
        password = passwords[user]
        rendered = password if password.startswith("$") else json.dumps(password)
        allow = ", ".join(json.dumps(subject) for subject in publish_allowed(user))
        lines.append(
            f'    {{user: "{user}", password: {rendered}, permissions: {{publish: {{allow: [{allow}]}}}}}}'
        )
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def password_variable(user: str) -> str:
    return f"{user.upper().replace('-', '_')}_NATS_PASSWORD"


ADMIN_TOKEN_VARIABLE = "BRIXMESH_ADMIN_TOKEN"


def secrets_env() -> str:
    """Fresh secrets of a deployed mesh, one ``NAME=value`` a line."""
    lines = [f"{ADMIN_TOKEN_VARIABLE}={secrets.token_urlsafe(32)}"]
    lines += [f"{password_variable(user)}={password}" for user, password in generate_passwords().items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--env"]:
        print("# brixmesh secrets: keep private. Compose reads them from .env; Kubernetes from a Secret:")
        print("#   kubectl -n brixmesh create secret generic brixmesh-secrets --from-env-file=FILE")
        print(secrets_env(), end="")
    else:
        print("# Generated by `python -m brixmesh.common.nats_auth` (make docs): per-service NATS users and")
        print("# publish permissions. Passwords come from the server's environment (compose: .env; Kubernetes:")
        print("# the brixmesh-secrets Secret); `python -m brixmesh.common.nats_auth --env` generates them.")
        variables = {user: "$" + password_variable(user) for user in (*SERVICE_USERS, CLI_USER)}
        print(server_config(variables), end="")
