"""The ``PodAutoscaler`` CustomResourceDefinition, generated from :class:`PodAutoscalerSpec` (the model every
autoscaler spec is validated with), so that the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from brixmesh.common.crd import SpecStatus, custom_resource_definition, structural_schema

from brixmesh.autoscaler.spec import PodAutoscalerSpec


def pod_autoscaler_crd() -> dict[str, Any]:
    return custom_resource_definition(
        group="brixmesh.io", version="v1alpha1", kind="PodAutoscaler", plural="podautoscalers",
        short_names=["pas"], spec=structural_schema(PodAutoscalerSpec, exclude=["name"]),
        status=structural_schema(SpecStatus),
        description="How the brixmesh autoscaler scales one deployment (docs/autoscaling.md); "
        "metadata.name is the autoscaler's name.",
        columns=[
            {"name": "Deployment", "type": "string", "jsonPath": ".spec.deployment"},
            {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
            {"name": "Min", "type": "integer", "jsonPath": ".spec.min_replicas"},
            {"name": "Max", "type": "integer", "jsonPath": ".spec.max_replicas"},
            {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
        ],
    )  # fmt: skip
