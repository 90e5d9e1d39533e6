"""Deployment specs: what to run, how many, and how to tell it is healthy. Validated at the edge (YAML files,
HTTP bodies) into a frozen :class:`DeploymentSpec`; every problem becomes a :class:`SpecError` naming the field.

    name: chat                    # lowercase letters, digits, '-'; becomes part of pod names and NATS subjects
    model: tiny-llama             # served model name
    engine: sim                   # sim | vllm | sglang
    model_path: /models/tiny      # optional: directory to serve (default: engine's own lookup of `model`)
    engine_args: ["--max-num-seqs", "8"]   # or one string, split like a shell (policy.py refuses some flags)
    env: {KEY: value}             # policy.py refuses loader/interpreter/path variables; GET redacts values
    replicas: 2
    role: both                    # prefill | decode | both
    cpus: "0-3"                   # optional CPU set the pods are pinned to
    cpus_per_pod: 1               # optional: each pod gets its own slice of `cpus` (0 = the whole set)
    readiness: {path: /health, timeout_s: 120}
    restart_policy: always        # always | on-failure | never
    drain_grace_s: 60             # longest wait for in-flight requests before a drained pod is stopped
    labels: {team: search}
    nodes: 1                      # nodes each engine group spans (> 1: a backend that gangs them, e.g. ray)
    tensor_parallel_size: 1       # engine flags as vLLM's, set from these (not in engine_args); their
    pipeline_parallel_size: 1     # product must be a multiple of `nodes` (an equal share per node)

Engines the orchestrator does not run (containers, remote servers) are registered instead of started:

    name: compose-engines
    model: tiny-llama
    engine: sim                   # what runs there (label; any engine, sglang included)
    external:                     # one pod per endpoint; replicas = their number
      - {url: "http://engine-0:8000", kv_events: "tcp://engine-0:5557", kv_replay: "tcp://engine-0:5558"}
    block_size: 16                # their KV block size, if known

A deployment made of **role sets** (prefill/decode disaggregation) declares ``roles`` instead of one
``role``; the fields above are shared by every role, each role adds its own:

    name: pd
    model: tiny-llama
    engine: sim
    mode: replica                 # replica: `replicas` role sets of this shape | pool: one role set whose
                                  # roles each scale on their own (`replicas` must stay 1)
    replicas: 2                   # role sets
    roles:
      - name: prefill             # lowercase letters, digits, '-'; at most 12 characters
        role: prefill             # what it does: prefill | decode | both (default: its name, if one of them)
        replicas: 1               # pods of this role per role set (pool mode: in all)
        engine_args: ["--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}']
        env: {KEY: value}
        resources: {cpus: "0-3", cpus_per_pod: 1, gpus: 1, memory: 16Gi}
        upgrade_order: 0          # lower first (role_order sequential / interleaved)
      - name: decode
        replicas: 1
        engine_args: ["--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}']
    update:                       # how a template change rolls out
      max_surge: 1                # role sets (replica mode) or pods per role (pool mode) above the desired
      max_unavailable: 0          # ready ones that may be missing meanwhile
      role_order: sequential      # sequential | parallel | interleaved: how the roles of a role set start

A single-role deployment is a deployment with one implicit role (``roles`` empty) and keeps its surge
rollout. The model is backend-neutral: the local backend runs it as processes, the Kubernetes backend as
pods of a custom resource; ``resources`` fields a backend cannot apply are documented there.

A YAML source holds one spec, a list of specs, ``deployments: [...]``, or several documents.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from brixmesh.orchestrator.policy import check_engine_args, check_env, redacted

ENGINES = ("sim", "vllm", "sglang")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_ROLE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
MAX_ROLE_SETS = 100
"""Role-set indexes stay below this: they are part of pod names."""
PodRole = Literal["prefill", "decode", "both"]
RoleOrder = Literal["sequential", "parallel", "interleaved"]
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
PARALLEL_FLAGS = (
    "--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp", "--distributed-executor-backend",
)
"""Set from a spec's ``tensor_parallel_size``/``pipeline_parallel_size``/``nodes``, never in engine args."""
MAX_GROUP_NODES = 64
ORCHESTRATOR_FLAGS = ("--host", "--port", "--served-model-name", "--kv-events-config", "--replicas", "--base-port")
"""Flags the orchestrator sets itself (endpoints it announces); engine_args may not override them."""


class SpecError(ValueError):
    """A deployment spec is invalid; ``str()`` is one line, ``param`` the offending field (if one)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ReadinessSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    """HTTP path answering 2xx once the engine serves; default per engine."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Seconds from launch to ready before the pod is restarted; default per engine."""

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value


class ExternalEndpoint(BaseModel):
    """An engine the orchestrator does not run (a container, a remote server): announced and probed only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    """Base URL of its HTTP API, e.g. ``http://engine-0:8000``."""
    kv_events: str = ""
    """ZMQ endpoint its KV-event publisher binds (``tcp://engine-0:5557``), if it publishes."""
    kv_replay: str = ""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or value.rstrip("/").count("/") != 2:
            raise ValueError(f"expected http://host:port, got {value!r}")
        return value.rstrip("/")

    @field_validator("kv_events", "kv_replay")
    @classmethod
    def _zmq_endpoint(cls, value: str) -> str:
        if value and not value.startswith(("tcp://", "ipc://")):
            raise ValueError(f"expected tcp://host:port or ipc://path, got {value!r}")
        return value


class ResourcesSpec(BaseModel):
    """What one pod of a role needs. ``cpus``/``cpus_per_pod`` pin local processes (as a single-role
    deployment's top-level fields do); ``gpus``/``memory`` are requests of cluster backends (Kubernetes:
    ``nvidia.com/gpu`` and memory); the local backend places every pod on one GPU of its node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: tuple[int, ...] | None = None
    cpus_per_pod: int = Field(default=0, ge=0)
    gpus: int = Field(default=1, ge=0)
    memory: str | None = None
    """A Kubernetes quantity (``16Gi``); None: no request."""

    @field_validator("cpus", mode="before")
    @classmethod
    def _parse_cpus(cls, value: Any) -> Any:
        return _cpu_input(value)

    @field_validator("cpus")
    @classmethod
    def _cpus_unique(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return _cpu_set(value)

    @field_validator("cpus_per_pod")
    @classmethod
    def _cpu_slices(cls, value: int, info: ValidationInfo) -> int:
        return _cpu_slice(value, info.data.get("cpus"))

    @field_validator("memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY.match(value):
            raise ValueError(f"{value!r} is not a memory quantity like '512Mi' or '16Gi'")
        return value


class RoleSpec(BaseModel):
    """One role of a role set: its pods share the deployment's fields plus these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    role: PodRole = "both"
    """What its pods do; defaults to the role's name when that is ``prefill`` or ``decode``."""
    replicas: int = Field(default=1, ge=0)
    """Pods of this role in each role set (pool mode: in the one role set)."""
    engine_args: tuple[str, ...] = ()
    """Appended to the deployment's ``engine_args``."""
    env: dict[str, str] = Field(default_factory=dict)
    """Over the deployment's ``env``."""
    resources: ResourcesSpec = ResourcesSpec()
    upgrade_order: int = 0
    """Lower starts (and is replaced) first under role_order sequential and interleaved; ties keep the
    order of ``roles``."""

    @model_validator(mode="before")
    @classmethod
    def _role_from_name(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "role" not in data and data.get("name") in ("prefill", "decode"):
            return {**data, "role": data["name"]}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ROLE_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid role name: 1-12 lowercase letters, digits or '-', starting and "
                "ending with a letter or digit"
            )
        return value

    @field_validator("engine_args", mode="before")
    @classmethod
    def _split_engine_args(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("engine_args")
    @classmethod
    def _engine_args_policy(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _checked_engine_args(value)

    @field_validator("env")
    @classmethod
    def _env_policy(cls, value: dict[str, str]) -> dict[str, str]:
        check_env(value)
        return value


class UpdatePolicy(BaseModel):
    """A rolling update of a role-set deployment. Replica mode replaces whole role sets: at most
    ``max_surge`` new ones beyond ``replicas``, an old one drained only while at least ``replicas -
    max_unavailable`` role sets stay ready. Pool mode does the same per role, pod by pod."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_surge: int = Field(default=1, ge=0)
    max_unavailable: int = Field(default=0, ge=0)
    role_order: RoleOrder = "sequential"
    """How the roles of a role set are started (and, in pool mode, replaced): ``sequential`` one role after
    the other in ``upgrade_order``, each once the previous one is ready; ``parallel`` all at once;
    ``interleaved`` one pod at a time, alternating between the roles."""

    @model_validator(mode="after")
    def _progress(self) -> UpdatePolicy:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0: the update could never proceed")
        return self


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    engine: str = "sim"
    model_path: str | None = None
    engine_args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    replicas: int = Field(default=1, ge=0)
    role: Literal["prefill", "decode", "both"] = "both"
    cpus: tuple[int, ...] | None = None
    cpus_per_pod: int = Field(default=0, ge=0)
    readiness: ReadinessSpec = ReadinessSpec()
    restart_policy: Literal["always", "on-failure", "never"] = "always"
    drain_grace_s: float = Field(default=60.0, ge=0)
    labels: dict[str, str] = Field(default_factory=dict)
    external: tuple[ExternalEndpoint, ...] = ()
    """Engines already running elsewhere: one pod per endpoint, announced and probed, never started."""
    block_size: int = Field(default=0, ge=0)
    """KV block size of external engines (0: unknown); pods the orchestrator runs report their own."""
    roles: tuple[RoleSpec, ...] = ()
    """The roles of each role set; empty: one implicit role (``role``, ``replicas`` pods)."""
    mode: Literal["replica", "pool"] = "replica"
    update: UpdatePolicy = UpdatePolicy()
    nodes: int = Field(default=1, ge=1, le=MAX_GROUP_NODES)
    """Nodes one pod (an engine group) spans; its head node serves the HTTP API and KV events."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _external_replicas(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("external") and "replicas" not in data:
            return {**data, "replicas": len(data["external"])}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid name: 1-40 lowercase letters, digits or '-', starting and ending "
                "with a letter or digit"
            )
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value or any(ch.isspace() for ch in value):
            raise ValueError(f"must be a non-empty name without spaces, got {value!r}")
        return value

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"unknown engine {value!r}; expected one of {', '.join(ENGINES)}")
        return value

    @field_validator("engine_args", mode="before")
    @classmethod
    def _split_engine_args(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("engine_args")
    @classmethod
    def _no_orchestrator_flags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _checked_engine_args(value)

    @field_validator("env")
    @classmethod
    def _env_policy(cls, value: dict[str, str]) -> dict[str, str]:
        check_env(value)
        return value

    @field_validator("cpus", mode="before")
    @classmethod
    def _parse_cpus(cls, value: Any) -> Any:
        return _cpu_input(value)

    @field_validator("cpus")
    @classmethod
    def _cpus_unique(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return _cpu_set(value)

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} must be 1-63 letters, digits, '.', '_', '/' or '-'")
        return value

    @field_validator("cpus_per_pod")
    @classmethod
    def _cpu_slices(cls, value: int, info: ValidationInfo) -> int:
        return _cpu_slice(value, info.data.get("cpus"))

    @field_validator("external")
    @classmethod
    def _external_only(cls, value: tuple[ExternalEndpoint, ...], info: ValidationInfo) -> tuple[ExternalEndpoint, ...]:
        if not value:
            return value
        if info.data.get("replicas") != len(value):
            raise ValueError(
                f"replicas ({info.data.get('replicas')}) must equal the number of external endpoints ({len(value)}): "
                "the orchestrator cannot start or stop engines it does not run"
            )
        for field in ("engine_args", "cpus", "model_path", "env"):
            if info.data.get(field):
                raise ValueError(f"{field} does not apply to external engines")
        urls = [endpoint.url for endpoint in value]
        if len(set(urls)) != len(urls):
            raise ValueError("an endpoint is listed twice")
        return value

    @model_validator(mode="after")
    def _engine_group(self) -> DeploymentSpec:
        world = self.tensor_parallel_size * self.pipeline_parallel_size
        if world % self.nodes:
            raise ValueError(
                f"nodes: tensor_parallel_size x pipeline_parallel_size ({world}) must be a multiple of nodes "
                f"({self.nodes}): every node of an engine group holds an equal share of its ranks"
            )
        if self.external and (world > 1 or self.nodes > 1):
            raise ValueError("nodes and parallel sizes do not apply to external engines")
        for role in self.roles or [self]:
            flag = next((arg.split("=", 1)[0] for arg in role.engine_args
                         if arg.split("=", 1)[0] in PARALLEL_FLAGS), None)  # fmt: skip
            if flag is not None:
                raise ValueError(
                    f"{flag} is set from the spec's tensor_parallel_size, pipeline_parallel_size and nodes; "
                    "remove it from engine_args"
                )
        return self

    @model_validator(mode="after")
    def _role_sets(self) -> DeploymentSpec:
        if not self.roles:
            if self.mode != "replica" or self.update != UpdatePolicy():
                raise ValueError("mode and update apply to deployments with roles")
            return self
        names = [role.name for role in self.roles]
        if len(set(names)) != len(names):
            raise ValueError(f"roles: role {next(n for n in names if names.count(n) > 1)!r} is listed twice")
        clashes = [field for field in ("external", "cpus", "cpus_per_pod") if getattr(self, field)]
        if self.role != "both":
            clashes.append("role")
        if clashes:
            raise ValueError(f"{clashes[0]} does not apply to deployments with roles (set it per role)")
        if self.mode == "pool" and self.replicas != 1:
            raise ValueError("replicas: a pool-mode deployment is one role set (scale its roles instead)")
        if self.replicas + self.update.max_surge > MAX_ROLE_SETS:
            raise ValueError(f"replicas: at most {MAX_ROLE_SETS} role sets, surge included")
        for role in self.roles:
            _checked_engine_args(self.engine_args + role.engine_args)
            check_env({**self.env, **role.env})
        return self

    @property
    def is_external(self) -> bool:
        return bool(self.external)

    @property
    def has_roles(self) -> bool:
        return bool(self.roles)

    def role_named(self, name: str) -> RoleSpec:
        """The role called ``name``; KeyError if there is none."""
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(name)

    def roles_in_upgrade_order(self) -> list[RoleSpec]:
        return sorted(self.roles, key=lambda role: role.upgrade_order)

    def for_role(self, name: str) -> DeploymentSpec:
        """The single-role spec one pod of role ``name`` is launched from: the deployment's fields with the
        role's function, engine args (appended), env (over the deployment's) and CPUs."""
        role = self.role_named(name)
        return self.model_copy(update={
            "role": role.role, "replicas": role.replicas, "engine_args": self.engine_args + role.engine_args,
            "env": {**self.env, **role.env}, "cpus": role.resources.cpus,
            "cpus_per_pod": role.resources.cpus_per_pod, "roles": (), "mode": "replica",
            "update": UpdatePolicy(),
        })  # fmt: skip

    def template(self) -> dict[str, Any]:
        """Everything that shapes a pod; pods made from another template are replaced (rolling)."""
        return self.model_dump(exclude={"replicas", "drain_grace_s", "roles", "mode", "update"})

    def role_template(self, name: str) -> dict[str, Any]:
        """Everything that shapes a pod of role ``name`` (its pods are replaced when it changes)."""
        role = self.role_named(name)
        return {**self.for_role(name).template(), "resources": role.resources.model_dump()}

    def public_dict(self) -> dict[str, Any]:
        """What GET shows: env values redacted (secrets are never echoed)."""
        return {**self.to_dict(), "env": redacted(self.env)}

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        data["engine_args"] = list(self.engine_args)
        data["cpus"] = None if self.cpus is None else list(self.cpus)
        data["external"] = [endpoint.model_dump() for endpoint in self.external]
        data["roles"] = [role.model_dump(mode="json") for role in self.roles]
        return data


def parallel_args(spec: DeploymentSpec) -> tuple[str, ...]:
    """The engine flags (vLLM's names) of ``spec``'s group shape: none for a single-rank engine."""
    args: tuple[str, ...] = ()
    if spec.tensor_parallel_size > 1:
        args += ("--tensor-parallel-size", str(spec.tensor_parallel_size))
    if spec.pipeline_parallel_size > 1:
        args += ("--pipeline-parallel-size", str(spec.pipeline_parallel_size))
    if spec.nodes > 1:
        args += ("--distributed-executor-backend", "ray")
    return args


@dataclass(frozen=True, order=True)
class RoleMember:
    """Where one pod of a role-set deployment belongs: role set ``role_set`` (named
    ``<deployment>-<role_set>``), role ``role``, ``replica_index`` within that role in that role set."""

    role_set: int
    role: str
    replica_index: int


def role_set_name(deployment: str, index: int) -> str:
    return f"{deployment}-{index}"


KV_CONNECTORS = {
    "NixlConnector": "nixl",
    "NixlPullConnector": "nixl",
    "ExampleConnector": "shared-storage",
    "SharedStorageConnector": "shared-storage",
}
"""vLLM ``kv_connector`` names -> how the router moves KV between the pods (``PodInfo.kv_transfer``)."""
SGLANG_BOOTSTRAP_PORT = 8998


def kv_transfer_of(engine: str, engine_args: Sequence[str]) -> tuple[str, int]:
    """How a pod launched with ``engine_args`` hands its KV cache over (``PodInfo.kv_transfer``) and, for
    SGLang, its bootstrap port: vLLM's (and the simulator's) ``--kv-transfer-config`` connector, or
    SGLang's ``--disaggregation-mode``. ``("", 0)``: no P/D transfer (or a connector the router need not
    know, such as a KV-cache tier)."""
    if engine == "sglang" or last_flag(engine_args, "--disaggregation-mode") is not None:
        if last_flag(engine_args, "--disaggregation-mode") in (None, "null"):
            return "", 0
        port = last_flag(engine_args, "--disaggregation-bootstrap-port")
        return "sglang", int(port) if port is not None and port.isdigit() else SGLANG_BOOTSTRAP_PORT
    config = last_flag(engine_args, "--kv-transfer-config")
    if config is None:
        return "", 0
    try:
        connector = json.loads(config).get("kv_connector", "")
    except (ValueError, AttributeError):
        return "", 0
    return KV_CONNECTORS.get(connector, ""), 0


def last_flag(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` / ``flag=VALUE`` in ``argv`` (argparse: the last one wins)."""
    found: str | None = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def _checked_engine_args(value: tuple[str, ...]) -> tuple[str, ...]:
    for arg in value:
        flag = arg.split("=", 1)[0]
        if flag in ORCHESTRATOR_FLAGS:
            raise ValueError(f"{flag} is set by the orchestrator (it announces the endpoint); remove it")
    check_engine_args(value)
    return value


def _cpu_input(value: Any) -> Any:
    if isinstance(value, str):
        return parse_cpu_list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def _cpu_set(value: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("must name at least one CPU (leave it out for no pinning)")
    if any(cpu < 0 for cpu in value):
        raise ValueError("CPU numbers must be >= 0")
    return tuple(sorted(set(value)))


def _cpu_slice(value: int, cpus: tuple[int, ...] | None) -> int:
    if value and cpus is None:
        raise ValueError("needs cpus (the set to slice)")
    if cpus is not None and value > len(cpus):
        raise ValueError(f"{value} is more than the {len(cpus)} CPUs in cpus")
    return value


def parse_cpu_list(text: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]`` (the cpuset / ``taskset -c`` syntax)."""
    cpus: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list like '0-3,6'")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.extend(range(low, high + 1))
    return cpus


def format_cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def parse_spec(data: object, *, source: str = "spec") -> DeploymentSpec:
    """Validate one spec given as a mapping (decoded JSON or YAML)."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: a deployment must be a mapping of fields, got {type(data).__name__}")
    try:
        return DeploymentSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise _spec_error(exc, _label(source, data)) from None


def parse_yaml(text: str, *, source: str = "spec") -> list[DeploymentSpec]:
    """Every spec in a YAML (or JSON) text; names must be unique within it."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}: invalid YAML: {problem}{where}") from None
    items: list[object] = []
    for doc in documents:
        if isinstance(doc, Mapping) and set(doc) == {"deployments"}:
            doc = doc["deployments"]
        items.extend(doc if isinstance(doc, list) else [doc])
    specs = [parse_spec(item, source=source) for item in items]
    return unique(specs, source)


def load_path(path: Path) -> list[DeploymentSpec]:
    """Specs from a YAML file, or from every ``*.yaml``/``*.yml`` file of a directory (sorted by name)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        return unique([spec for file in files for spec in load_path(file)], str(path))
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_yaml(text, source=str(path))


def unique(specs: list[DeploymentSpec], source: str) -> list[DeploymentSpec]:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise SpecError(f"{source}: deployment {spec.name!r} is defined twice", "name")
        seen.add(spec.name)
    return specs


def merge_patch(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7396): mappings merge recursively, ``null`` removes a field (back to default)."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def _label(source: str, data: Mapping[Any, Any]) -> str:
    name = data.get("name")
    return f"{source}: deployment {name!r}" if isinstance(name, str) and name else source


def _spec_error(exc: ValidationError, where: str) -> SpecError:
    error = exc.errors()[0]
    param = ".".join(str(part) for part in error["loc"]) or None
    if error["type"] == "extra_forbidden":
        message = f"unknown field {param!r}"
    elif error["type"] == "missing":
        message = f"{param}: required field missing"
    else:
        reason = error["msg"].removeprefix("Value error, ")
        message = f"{param}: {reason}" if param else reason
    more = len(exc.errors()) - 1
    return SpecError(f"{where}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""), param)
