"""Wiring of the gpu-doctor service (one per node).

Inputs: the node's GPUs (NVML, a DCGM exporter), its engine pods (``pods.*`` leases; probes, metrics,
canaries), a simulated fault script. State: the policy's episodes and cooldowns (rebuilt from live signals
after a restart), decisions in force. Outputs: ``gpu.decisions.<node>``, ``GET /v1/decisions``, metrics;
``POST /admin/faults`` adds simulated faults at run time.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec
from brixmesh.common.pod_watch import watch_pods
from brixmesh.common.service import Service
from fastapi import Request
from fastapi.responses import JSONResponse

from brixmesh.gpu_doctor.doctor import Doctor
from brixmesh.gpu_doctor.policy import Policy
from brixmesh.gpu_doctor.settings import GpuDoctorSettings
from brixmesh.gpu_doctor.signals import Source
from brixmesh.gpu_doctor.sources.dcgm import DcgmSource
from brixmesh.gpu_doctor.sources.engine import EngineSource
from brixmesh.gpu_doctor.sources.nvml import NvmlSource, NvmlUnavailable
from brixmesh.gpu_doctor.sources.simulated import ScriptError, SimulatedSource, load_script, parse_faults

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def build_service(settings: GpuDoctorSettings) -> Service:
    service = Service("gpu-doctor", settings)
    names = settings.source_names
    if "dcgm" in names and not settings.dcgm_url:
        print("brixmesh-gpu-doctor: the dcgm source needs BRIXMESH_DCGM_URL", file=sys.stderr)
        raise SystemExit(2)
    try:
        script = load_script(settings.fault_script) if settings.fault_script is not None else []
    except ScriptError as exc:
        print(f"brixmesh-gpu-doctor: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    simulated = SimulatedSource(script, time.time()) if "sim" in names else None
    doctor: Doctor | None = None
    unavailable: dict[str, str] = {}

    def sources() -> list[Source]:
        found: list[Source] = []
        for name in names:
            if name == "nvml":
                nvml = NvmlSource()
                try:
                    log.info("NVML: %d GPU(s)", nvml.open())
                    found.append(nvml)
                except NvmlUnavailable as exc:
                    unavailable["nvml"] = str(exc)
                    log.warning("running without the nvml source: %s", exc)
            elif name == "dcgm":
                found.append(DcgmSource(settings.dcgm_url))
            elif name == "engine":
                found.append(EngineSource(
                    lambda: doctor.serving_pods() if doctor is not None else [],
                    canary_interval_s=settings.canary_interval_s,
                    baseline_intervals=settings.step_baseline_intervals,
                ))  # fmt: skip
            elif simulated is not None:
                found.append(simulated)
        return found

    @service.app.get("/v1/decisions")
    async def decisions() -> JSONResponse:
        recent = list(doctor.recent) if doctor is not None else []
        return JSONResponse({"object": "list", "data": msgspec.to_builtins(recent)})

    @service.app.get("/v1/health")
    async def health() -> JSONResponse:
        active = [source.name for source in doctor.sources] if doctor is not None else []
        pods = sorted(doctor.pods) if doctor is not None else []
        return JSONResponse({"node": settings.node_name, "sources": active, "unavailable": unavailable,
                             "pods": pods})

    @service.app.get("/admin/faults")
    async def get_faults() -> JSONResponse:
        if simulated is None:
            return _error(404, "the sim source is not enabled (BRIXMESH_DOCTOR_SOURCES)")
        return JSONResponse({"object": "list", "data": simulated.scheduled()})

    @service.app.post("/admin/faults")
    async def add_faults(request: Request) -> JSONResponse:
        """Schedule simulated faults (the fault-script format; ``at_s`` counts from now)."""
        if simulated is None:
            return _error(404, "the sim source is not enabled (BRIXMESH_DOCTOR_SOURCES)")
        try:
            faults = parse_faults(msgspec.json.decode(await request.body()), "request body")
        except (msgspec.DecodeError, ScriptError) as exc:
            return _error(400, str(exc))
        simulated.add(faults, time.time())
        return JSONResponse({"object": "list", "data": msgspec.to_builtins(faults)}, status_code=201)

    async def start(service: Service) -> None:
        nonlocal doctor
        policy = Policy(cooldown_s=settings.cooldown_s, hold_scale=settings.hold_scale)
        doctor = Doctor(
            service.bus, node=settings.node_name, instance_id=service.instance_id, sources=[], policy=policy,
            resend_interval_s=settings.resend_interval_s, registry=service.registry,
        )  # fmt: skip
        doctor.sources = sources()
        watch = await watch_pods(service.bus, doctor.on_pod_event, registry=service.registry)
        service.spawn(watch.expire_forever(), "pod-leases")
        service.spawn(doctor.run(settings.poll_interval_s), "doctor")

    async def stop(_service: Service) -> None:
        if doctor is not None:
            await doctor.close()

    service.on_start(start)
    service.on_stop(stop)
    return service
