"""The ``ModelAdapter`` CustomResourceDefinition, generated from :class:`AdapterSpec` (the model every adapter
spec is validated with), so that the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from brixmesh.common.crd import SpecStatus, custom_resource_definition, structural_schema

from brixmesh.adapter_manager.spec import AdapterSpec


def model_adapter_crd() -> dict[str, Any]:
    return custom_resource_definition(
        group="brixmesh.io", version="v1alpha1", kind="ModelAdapter", plural="modeladapters",
        short_names=["ma"], spec=structural_schema(AdapterSpec, exclude=["name"]),
        status=structural_schema(SpecStatus),
        description="A LoRA adapter the brixmesh adapter-manager places on engines of its base model "
        "(docs/adapters.md); metadata.name is the adapter's name.",
        columns=[
            {"name": "Base model", "type": "string", "jsonPath": ".spec.base_model"},
            {"name": "Replicas", "type": "string", "jsonPath": ".spec.replicas"},
            {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
        ],
    )  # fmt: skip
