"""The ``ModelDeployment`` custom resource: its spec is the orchestrator's :class:`DeploymentSpec` (the same
pydantic model the HTTP API and deployment files go through) plus what only a cluster needs (image, CPU and
memory, accelerators, node selector); its status is what the orchestrator observes. The CRD's schema is
generated from these models (:func:`model_deployment_crd`), so the API server and the orchestrator accept
the same fields with the same bounds.

    apiVersion: brixmesh.io/v1alpha1
    kind: ModelDeployment
    metadata: {name: chat}
    spec:
      model: tiny-llama
      engine: sim
      replicas: 2
      engine_args: ["--max-num-seqs", "8"]
      resources: {cpu: "1", memory: 2Gi, accelerator: {type: nvidia.com/gpu, count: 1}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from brixmesh.common.crd import Condition, custom_resource_definition, structural_schema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from brixmesh.orchestrator.spec import DeploymentSpec, SpecError, parse_spec

GROUP = "brixmesh.io"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
LOCAL_ONLY_FIELDS = ("name", "cpus", "cpus_per_pod", "external", "block_size")
"""DeploymentSpec fields with no meaning on a cluster (CPU pinning on this machine, engines run elsewhere):
left out of the CRD; the name is ``metadata.name``."""
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_BINARY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40}  # fmt: skip


def quantity(text: str) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``16Gi``) as a number (CPUs, bytes)."""
    match = _QUANTITY.match(text)
    if match is None or match.group(2) in ("P", "E", "Pi", "Ei"):
        raise ValueError(f"{text!r} is not a quantity like 500m, 2, 512Mi or 16Gi")
    suffix = match.group(2) or ""
    number = float(text[: len(text) - len(suffix)])
    return number / 1000 if suffix == "m" else number * _BINARY[suffix]


class Accelerator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(default="nvidia.com/gpu", pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$")
    """Extended resource name the device plugin advertises (``nvidia.com/gpu``, ``amd.com/gpu``)."""
    count: int = Field(default=0, ge=0)


class PodResources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: str = "1"
    memory: str = "2Gi"
    accelerator: Accelerator = Accelerator()

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if quantity(value) <= 0:
            raise ValueError(f"must be more than zero, got {value!r}")
        return value


class ClusterFields(BaseModel):
    """What a pod needs on a cluster beyond the engine's spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None
    """Container image; default: the orchestrator's image for the engine (``engine_images``)."""
    resources: PodResources = PodResources()
    node_selector: dict[str, str] = Field(default_factory=dict)


class RoleStatus(BaseModel):
    replicas: int = 0
    ready: int = 0


class RoleSetStatus(BaseModel):
    name: str
    ready: bool
    """Every role has its desired number of ready pods."""
    current: bool
    """Every pod runs its role's current template."""
    pods: int


class ModelDeploymentStatus(BaseModel):
    """What the orchestrator observes, written to the status subresource (camelCase, as Kubernetes)."""

    replicas: int = 0
    """Pods not draining, or role sets for a deployment with roles (the scale subresource's
    ``statusReplicasPath``, counted in the unit of ``spec.replicas``)."""
    readyReplicas: int = 0
    updatedReplicas: int = 0
    roles: dict[str, RoleStatus] = Field(default_factory=dict)
    """By role name (the deployment's function for one without roles)."""
    roleSets: list[RoleSetStatus] = Field(default_factory=list)
    observedGeneration: int = 0
    selector: str = ""
    """Label selector of its pods (``labelSelectorPath``: HPA and ``kubectl scale`` need it)."""
    conditions: list[Condition] = Field(default_factory=list)


def spec_schema() -> dict[str, Any]:
    schema = structural_schema(DeploymentSpec, exclude=LOCAL_ONLY_FIELDS)
    schema["properties"].update(structural_schema(ClusterFields)["properties"])
    return schema


def model_deployment_crd() -> dict[str, Any]:
    return custom_resource_definition(
        group=GROUP, version=VERSION, kind=KIND, plural=PLURAL, short_names=["md"],
        description="Engines serving one model, run by the brixmesh orchestrator (docs/kubernetes.md).",
        spec=spec_schema(), status=structural_schema(ModelDeploymentStatus),
        scale={"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
               "labelSelectorPath": ".status.selector"},
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Engine", "type": "string", "jsonPath": ".spec.engine"},
            {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )  # fmt: skip


def parse_resource(obj: Mapping[str, Any]) -> tuple[DeploymentSpec, ClusterFields]:
    """A ModelDeployment object's spec, validated by the same models as every other spec source."""
    name = obj.get("metadata", {}).get("name", "")
    spec = dict(obj.get("spec") or {})
    cluster = {key: spec.pop(key) for key in list(spec) if key in ClusterFields.model_fields}
    for key in LOCAL_ONLY_FIELDS:
        if key in spec:
            raise SpecError(f"{KIND} {name!r}: field {key!r} does not apply on Kubernetes", key)
    deployment = parse_spec({**spec, "name": name}, source=f"{KIND} {name!r}")
    try:
        return deployment, ClusterFields.model_validate(cluster)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"])
        raise SpecError(
            f"{KIND} {name!r}: {param}: {error['msg'].removeprefix('Value error, ')}", param
        ) from None
