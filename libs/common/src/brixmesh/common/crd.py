"""Kubernetes CustomResourceDefinitions generated from the pydantic models the services validate specs with,
so that a CRD's schema and the service's validation cannot drift apart.

:func:`structural_schema` turns a model's JSON schema into a *structural* OpenAPI v3 schema as
``apiextensions.k8s.io/v1`` requires: every ``$ref`` inlined, ``X | None`` as ``nullable``, no
``anyOf``/``title``/``default``, exclusive bounds in OpenAPI 3.0 form. Unknown fields are not declared
``additionalProperties: false`` (structural schemas forbid it beside ``properties``): the API server prunes
them, and refuses them under ``kubectl``'s default strict field validation. What a schema cannot express (a
field's cross-checks, engine flags policy) the service checks itself and reports as a condition.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

_DROPPED = ("title", "default", "examples")


class Condition(BaseModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    lastTransitionTime: str


class SpecStatus(BaseModel):
    """What a service made of a resource it only reads (the status subresource of a PodAutoscaler or a
    ModelAdapter): the generation it read last and an ``Accepted`` condition."""

    observedGeneration: int = 0
    conditions: list[Condition] = Field(default_factory=list)


class ConditionClock:
    """Builds conditions whose ``lastTransitionTime`` moves only when their status does, per resource and
    condition type."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, str, str], str] = {}

    def condition(self, name: str, kind: str, status: str, reason: str, message: str) -> Condition:
        key = (name, kind, status)
        if key not in self._since:
            for other in ("True", "False", "Unknown"):
                self._since.pop((name, kind, other), None)
            self._since[key] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Condition(
            type=kind, status=status, reason=reason, message=message,  # type: ignore[arg-type]
            lastTransitionTime=self._since[key],
        )  # fmt: skip

    def forget(self, name: str) -> None:
        """The resource is gone."""
        self._since = {key: since for key, since in self._since.items() if key[0] != name}


def structural_schema(model: type[BaseModel], *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The model's fields (minus ``exclude``) as a structural OpenAPI v3 object schema."""
    raw = model.model_json_schema(by_alias=True)
    definitions = raw.get("$defs", {})
    schema = _convert(raw, definitions)
    for name in exclude:
        schema["properties"].pop(name, None)
    if "required" in schema:
        schema["required"] = [name for name in schema["required"] if name in schema["properties"]]
        if not schema["required"]:
            del schema["required"]
    return schema


def _convert(node: Mapping[str, Any], definitions: Mapping[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        return _convert({**target, **{k: v for k, v in node.items() if k != "$ref"}}, definitions)
    options = node.get("anyOf")
    if options is not None:
        present = [option for option in options if option.get("type") != "null"]
        if sorted(option.get("type", "") for option in present) == ["integer", "string"]:
            return {
                "x-kubernetes-int-or-string": True,
                **({"nullable": True} if len(present) < len(options) else {}),
            }
        if len(present) != 1:
            raise ValueError(f"cannot express a union of {len(present)} types structurally: {options}")
        merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **present[0]}
        converted = _convert(merged, definitions)
        if len(present) < len(options):
            converted["nullable"] = True
        return converted
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key in ("$defs", "additionalProperties"):
            continue
        if key == "properties":
            out[key] = {name: _convert(child, definitions) for name, child in value.items()}
        elif key == "items":
            out[key] = _convert(value, definitions)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound], out[key] = value, True
        elif key == "prefixItems":
            raise ValueError("fixed-length tuples have no structural form; use tuple[X, ...] or a list")
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        out["additionalProperties"] = _convert(extra, definitions)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def custom_resource_definition(
    *,
    group: str,
    version: str,
    kind: str,
    plural: str,
    spec: Mapping[str, Any],
    status: Mapping[str, Any] | None = None,
    short_names: Sequence[str] = (),
    scale: Mapping[str, str] | None = None,
    columns: Sequence[Mapping[str, str]] = (),
    description: str = "",
) -> dict[str, Any]:
    """A namespaced ``apiextensions.k8s.io/v1`` CRD with one served version; ``status`` (with a status
    subresource) and ``scale`` (``specReplicasPath``, ``statusReplicasPath``, ``labelSelectorPath``)
    optional."""
    properties: dict[str, Any] = {"spec": dict(spec)}
    subresources: dict[str, Any] = {}
    if status is not None:
        properties["status"] = dict(status)
        subresources["status"] = {}
    if scale is not None:
        subresources["scale"] = dict(scale)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": ["spec"]}
    if description:
        schema["description"] = description
    served: dict[str, Any] = {
        "name": version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
    }
    if subresources:
        served["subresources"] = subresources
    if columns:
        served["additionalPrinterColumns"] = [dict(column) for column in columns]
    names: dict[str, Any] = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
    }
    if short_names:
        names["shortNames"] = list(short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "names": names, "scope": "Namespaced", "versions": [served]},
    }
