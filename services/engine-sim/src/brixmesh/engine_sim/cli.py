"""Command line of ``brixmesh-engine-sim``: vLLM's ``serve`` flag names plus simulator knobs.

``brixmesh-engine-sim serve MODEL --port 8000 ...`` and ``brixmesh-engine-sim --model MODEL ...`` both work,
so a deployment switches between ``vllm serve`` and the simulator by changing one word.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from brixmesh.engine_sim.config import EngineConfig
from brixmesh.engine_sim.faults import FAILURE_TYPES, Faults
from brixmesh.engine_sim.hashing import HASH_ALGOS
from brixmesh.engine_sim.kv_tier import parse_tier_config
from brixmesh.engine_sim.kv_events_config import KvEventsConfig, offset_endpoint, parse_kv_events_config
from brixmesh.engine_sim.kv_transfer import KvTransferConfig, parse_kv_transfer_config, sglang_config
from brixmesh.engine_sim.lora import parse_lora_modules
from brixmesh.engine_sim.parallel import GroupShape
from brixmesh.engine_sim.timing import GPU_PROFILES, MODEL_PROFILES
from brixmesh.engine_sim.tokenizer import DEFAULT_TOKENIZER_DIR


class CliError(Exception):
    """A one-line message for the user; the CLI exits with status 2."""


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str) -> None:
    parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brixmesh-engine-sim", description="Simulated vLLM 0.32 engine(s).")
    p.add_argument("command", nargs="?", choices=["serve"], help="optional, as in 'vllm serve'")
    p.add_argument("model_tag", nargs="?", help="model name or directory (as 'vllm serve MODEL')")
    p.add_argument("--model", help="model name or directory (alternative to the positional)")
    p.add_argument("--served-model-name", nargs="+", help="name(s) the API answers to; default: the model")
    p.add_argument("--tokenizer", help="tokenizer directory (tokenizer.json + tokenizer_config.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes, as vLLM")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--long-prefill-token-threshold", type=int, default=0)
    p.add_argument("--num-gpu-blocks-override", type=int)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    _bool_flag(p, "--enable-prefix-caching", True, "block-level prefix cache (default on, as vLLM v1)")
    p.add_argument("--prefix-caching-hash-algo", "--hash-algo", choices=HASH_ALGOS, default="sha256")
    p.add_argument("--enable-lora", action="store_true")
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument("--max-cpu-loras", type=int, help="accepted for compatibility")
    p.add_argument(
        "--lora-step-overhead",
        type=float,
        default=0.05,
        help="step slowdown per distinct adapter in a batch (0.05 = 5%%)",
    )
    p.add_argument("--lora-modules", nargs="+", default=[], help="name=path or JSON {name,path}")
    p.add_argument("--kv-events-config", help="vLLM's KVEventsConfig JSON")
    p.add_argument(
        "--kv-events-encoding",
        choices=["map", "array"],
        default="map",
        help="map = vLLM 0.32 tagged maps; array = legacy positional arrays",
    )
    p.add_argument(
        "--kv-transfer-config",
        help="vLLM's KVTransferConfig JSON: NixlConnector (P/D pull), ExampleConnector (shared storage) or "
        "BrixTierConnector (the KV tier: kv_connector_extra_config.tier_nodes)",
    )
    p.add_argument(
        "--disaggregation-mode",
        choices=["null", "prefill", "decode"],
        default="null",
        help="SGLang's P/D mode (bootstrap host/port/room in the requests)",
    )
    p.add_argument("--disaggregation-bootstrap-port", type=int, default=8998, help="SGLang prefill: KV port")
    p.add_argument("--enable-prompt-tokens-details", action="store_true")
    p.add_argument(
        "--enable-scale-out",
        action="store_true",
        help="serve /v1/*/render (token ids for peer routers); 403 without it, as vLLM",
    )
    p.add_argument("--chat-template", help="a Jinja chat template, as a file path or inline text")
    p.add_argument("--seed", type=int, default=0)
    compat = p.add_argument_group("vLLM flags accepted and ignored (nothing to simulate)")
    for flag in (
        "--enforce-eager",
        "--trust-remote-code",
        "--disable-log-requests",
        "--no-enable-log-requests",
        "--enable-log-requests",
        "--disable-log-stats",
        "--enable-chunked-prefill",
        "--no-enable-chunked-prefill",
        "--disable-frontend-multiprocessing",
    ):
        compat.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in (
        "--dtype",
        "--max-lora-rank",
        "--kv-cache-dtype",
        "--quantization",
        "--download-dir",
        "--load-format",
        "--tokenizer-mode",
        "--swap-space",
        "--distributed-executor-backend",
        "--generation-config",
        "--uvicorn-log-level",
        "--compilation-config",
        "-O",
        "--max-logprobs",
        "--revision",
    ):
        compat.add_argument(flag, help=argparse.SUPPRESS)
    add_group_arguments(p)
    p.add_argument("--max-waiting-queue-length", type=int, help="429 when this many requests wait")
    # timing
    p.add_argument("--perf-model", choices=["roofline", "per-token", "constant"], default="roofline")
    p.add_argument("--gpu", choices=sorted(GPU_PROFILES), default="h100")
    p.add_argument("--model-profile", choices=sorted(MODEL_PROFILES), default="llama-8b")
    p.add_argument("--time-to-first-token", type=float, default=20.0, help="ms, constant mode")
    p.add_argument("--inter-token-latency", type=float, default=5.0, help="ms, constant and per-token modes")
    p.add_argument("--prefill-overhead", type=float, default=5.0, help="ms, per-token mode")
    p.add_argument("--prefill-time-per-token", type=float, default=0.02, help="ms, per-token mode")
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="wall seconds per simulated second (>1 = slower)"
    )
    p.add_argument("--eos-probability", type=float, default=0.0, help="chance per token to emit EOS")
    p.add_argument("--kv-transfer-overhead", type=float, default=2.0, help="ms per P/D transfer")
    p.add_argument(
        "--kv-transfer-per-token",
        type=float,
        help="us per transferred token (default: the model's KV bytes over the GPU profile's KV link)",
    )
    p.add_argument(
        "--startup-duration",
        type=float,
        default=0.0,
        help="s before the HTTP port opens (a real engine takes 30+ s)",
    )
    # metrics
    p.add_argument("--metrics-flavor", choices=["vllm", "sglang"], default="vllm")
    p.add_argument(
        "--legacy-metrics",
        action="store_true",
        help="also emit vllm:gpu_cache_usage_perc and other pre-v1 series",
    )
    # replicas
    p.add_argument("--replicas", type=int, default=1, help="independent engines in this process")
    p.add_argument("--base-port", type=int, help="first HTTP port with --replicas (default: --port)")
    # faults
    p.add_argument(
        "--failure-injection-rate",
        "--fault-error-rate",
        type=float,
        default=0.0,
        help="fraction 0..1 (or percent 0..100) of generation requests that fail",
    )
    p.add_argument("--failure-types", "--fault-error-types", nargs="+", choices=sorted(FAILURE_TYPES))
    p.add_argument("--fault-crash-after", type=float, help="s after start the engine dies")
    p.add_argument("--fault-hang-after", type=float, help="s after start the engine stops answering")
    p.add_argument("--fault-slowdown", type=float, default=1.0, help="step time multiplier (straggler GPU)")
    p.add_argument(
        "--fault-corrupt-output", action="store_true",
        help="silent data corruption: other tokens than a healthy engine gives",
    )
    p.add_argument("--fault-stall-after-tokens", type=int)
    p.add_argument("--fault-stall-seconds", type=float, default=0.0)
    p.add_argument("--fault-disconnect-after-tokens", type=int)
    p.add_argument("--fault-kv-events-drop", type=float, default=0.0, help="probability to drop a batch")
    p.add_argument("--fault-kv-events-reorder", action="store_true")
    p.add_argument("--fault-lora-load-delay", type=float, default=0.0, help="s added to every LoRA load")
    p.add_argument("--fault-lora-load-fail", action="store_true")
    p.add_argument("--fault-metrics-delay", type=float, default=0.0)
    p.add_argument("--fault-metrics-error-rate", type=float, default=0.0)
    p.add_argument("--log-level", default="warning")
    return p


def replica_kv_events_config(config: KvEventsConfig | None, index: int) -> KvEventsConfig | None:
    """Replica i publishes on endpoint port + i (ipc paths get a ``-i`` suffix), like data-parallel rank i."""
    if config is None or index == 0:
        return config
    return replace(
        config,
        endpoint=_offset(config.endpoint, index),
        replay_endpoint=_offset(config.replay_endpoint, index) if config.replay_endpoint else None,
    )


def _offset(endpoint: str, index: int) -> str:
    if endpoint.startswith("ipc://"):
        return f"{endpoint}-{index}"
    try:
        return offset_endpoint(endpoint, index)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def kv_transfer_config(args: argparse.Namespace, index: int) -> KvTransferConfig | None:
    if args.disaggregation_mode != "null":
        return sglang_config(args.disaggregation_mode, args.disaggregation_bootstrap_port, index)
    if not args.kv_transfer_config or parse_tier_config(args.kv_transfer_config) is not None:
        return None  # no connector, or the KV tier's (kv_tier.py)
    try:
        return parse_kv_transfer_config(args.kv_transfer_config, index)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def configs_from_args(args: argparse.Namespace) -> list[EngineConfig]:
    model = args.model or args.model_tag
    if not model:
        raise CliError("a model is required: 'brixmesh-engine-sim serve MODEL' or --model MODEL")
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else None
    if tokenizer_dir is None and (Path(model) / "tokenizer.json").is_file():
        tokenizer_dir = Path(model)
    tokenizer_dir = tokenizer_dir or DEFAULT_TOKENIZER_DIR
    chat_template = None
    if args.chat_template is not None:
        template_path = Path(args.chat_template)
        chat_template = template_path.read_text() if template_path.is_file() else args.chat_template
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise CliError(f"--tokenizer {tokenizer_dir}: no tokenizer.json there")
    if args.replicas < 1:
        raise CliError("--replicas must be >= 1")
    rate = args.failure_injection_rate
    if rate > 1:
        rate /= 100.0  # llm-d-inference-sim takes a percentage
    try:
        faults = Faults(
            error_rate=rate,
            error_types=args.failure_types,
            crash_after_s=args.fault_crash_after,
            hang_after_s=args.fault_hang_after,
            slowdown=args.fault_slowdown,
            corrupt_output=args.fault_corrupt_output,
            stall_after_tokens=args.fault_stall_after_tokens,
            stall_seconds=args.fault_stall_seconds,
            disconnect_after_tokens=args.fault_disconnect_after_tokens,
            kv_events_drop_prob=args.fault_kv_events_drop,
            kv_events_reorder=args.fault_kv_events_reorder,
            lora_load_delay_s=args.fault_lora_load_delay,
            lora_load_fail=args.fault_lora_load_fail,
            metrics_delay_s=args.fault_metrics_delay,
            metrics_error_rate=args.fault_metrics_error_rate,
        )
    except ValueError as exc:
        raise CliError(f"fault flags: {exc}") from None
    try:
        lora_modules = parse_lora_modules(args.lora_modules)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if lora_modules and not args.enable_lora:
        raise CliError("--lora-modules needs --enable-lora")
    for name, path in lora_modules:
        if not Path(path).is_dir():
            raise CliError(f"--lora-modules {name}={path}: no adapter directory there")
    if args.lora_step_overhead < 0:
        raise CliError("--lora-step-overhead must be >= 0")
    if args.time_scale <= 0:
        raise CliError("--time-scale must be > 0")
    for flag, value in (
        ("--block-size", args.block_size),
        ("--max-num-seqs", args.max_num_seqs),
        ("--max-num-batched-tokens", args.max_num_batched_tokens),
        ("--max-model-len", args.max_model_len),
    ):
        if value is not None and value <= 0:
            raise CliError(f"{flag} must be > 0")
    if args.num_gpu_blocks_override is not None and args.num_gpu_blocks_override < 2:
        raise CliError("--num-gpu-blocks-override must be >= 2")
    try:
        kv_events = parse_kv_events_config(args.kv_events_config) if args.kv_events_config else None
        parse_tier_config(args.kv_transfer_config)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.kv_transfer_config and args.disaggregation_mode != "null":
        raise CliError("--kv-transfer-config (vLLM) and --disaggregation-mode (SGLang) exclude each other")
    base_port = args.base_port if args.base_port is not None else args.port
    base = EngineConfig(
        model=model,
        served_model_names=args.served_model_name or [model],
        tokenizer_dir=tokenizer_dir,
        chat_template=chat_template,
        host=args.host,
        api_key=args.api_key,
        port=base_port,
        max_model_len=args.max_model_len or 0,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=args.enable_prefix_caching,
        prefix_caching_hash_algo=args.prefix_caching_hash_algo,
        long_prefill_token_threshold=args.long_prefill_token_threshold,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        lora_step_overhead=args.lora_step_overhead,
        lora_modules=lora_modules,
        kv_events_config=kv_events,
        kv_events_encoding=args.kv_events_encoding,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        enable_scale_out=args.enable_scale_out,
        perf_model=args.perf_model,
        gpu=args.gpu,
        model_profile=args.model_profile,
        time_to_first_token_ms=args.time_to_first_token,
        inter_token_latency_ms=args.inter_token_latency,
        prefill_overhead_ms=args.prefill_overhead,
        prefill_time_per_token_ms=args.prefill_time_per_token,
        time_scale=args.time_scale,
        eos_probability=args.eos_probability,
        seed=args.seed,
        metrics_flavor=args.metrics_flavor,
        legacy_metrics=args.legacy_metrics,
        max_waiting_queue_length=args.max_waiting_queue_length,
        kv_transfer_config=args.kv_transfer_config,
        kv_transfer_overhead_ms=args.kv_transfer_overhead,
        kv_transfer_per_token_us=args.kv_transfer_per_token,
        startup_delay_s=args.startup_duration,
        faults=faults,
        group=group_shape(args),
    )
    configs = []
    for i in range(args.replicas):
        configs.append(
            replace(
                base,
                port=base_port + i if base_port else 0,
                replica_index=i,
                kv_events_config=replica_kv_events_config(kv_events, i),
                faults=replace(faults) if i else faults,
                kv_transfer=kv_transfer_config(args, i),
            )
        )
    return configs


def add_group_arguments(p: argparse.ArgumentParser) -> None:
    """An engine group's shape (vLLM's flags, plus the hardware the simulator needs to know)."""
    group = p.add_argument_group("engine group (roofline perf model: step time incl. collectives)")
    group.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    group.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    group.add_argument("--gpus-per-node", type=int, default=8, help="where collectives leave the node")
    group.add_argument(
        "--interconnect-bandwidth", type=float, default=50.0, help="GB/s per direction between nodes"
    )


def group_shape(args: argparse.Namespace) -> GroupShape:
    for flag in ("tensor_parallel_size", "pipeline_parallel_size", "gpus_per_node"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.interconnect_bandwidth <= 0:
        raise CliError("--interconnect-bandwidth must be > 0")
    return GroupShape(
        args.tensor_parallel_size, args.pipeline_parallel_size, args.gpus_per_node,
        args.interconnect_bandwidth,
    )
