"""On Kubernetes, the namespace's PodAutoscaler resources as autoscaler specs (``metadata.name`` is the
autoscaler's name): :class:`~brixmesh.common.kube.specs.ResourceSpecs` over :class:`Autoscalers`."""

from __future__ import annotations

from brixmesh.common.kube.api import Api
from brixmesh.common.kube.specs import ResourceSpecs

from brixmesh.autoscaler.registry import Autoscalers
from brixmesh.autoscaler.spec import PodAutoscalerSpec, SpecError, parse_spec


def pod_autoscaler_resources(
    api: Api, namespace: str, autoscalers: Autoscalers
) -> ResourceSpecs[PodAutoscalerSpec]:
    def apply(spec: PodAutoscalerSpec) -> None:
        # a resource's other changes (labels, annotations) and relists repeat its spec: the autoscaler's
        # windows are not restarted for them
        policy = autoscalers.get(spec.name)
        if policy is None or policy.spec != spec:
            autoscalers.put(spec)

    return ResourceSpecs(
        api, namespace, "podautoscalers", parse=lambda name, spec: parse_spec(spec, name=name),
        apply=apply, remove=autoscalers.delete, refusals=(SpecError,),
    )  # fmt: skip
