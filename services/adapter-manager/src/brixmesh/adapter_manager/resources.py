"""On Kubernetes, the namespace's ModelAdapter resources as adapter specs (``metadata.name`` is the adapter's
name): :class:`~brixmesh.common.kube.specs.ResourceSpecs` over the :class:`AdapterController`, registered with
origin ``resource``. Those records outlive a restart in the state directory; the first list drops the ones
whose resource went meanwhile."""

from __future__ import annotations

from brixmesh.common.kube.api import Api
from brixmesh.common.kube.specs import ResourceSpecs

from brixmesh.adapter_manager.controller import AdapterController
from brixmesh.adapter_manager.spec import AdapterSpec, SpecError, parse_spec


def model_adapter_resources(
    api: Api, namespace: str, controller: AdapterController
) -> ResourceSpecs[AdapterSpec]:
    return ResourceSpecs(
        api, namespace, "modeladapters", parse=lambda name, spec: parse_spec({**spec, "name": name}),
        apply=lambda spec: controller.register(spec, "resource"), remove=controller.remove,
        refusals=(SpecError,),
        owned=[name for name, record in controller.records.items() if record.origin == "resource"],
    )  # fmt: skip
