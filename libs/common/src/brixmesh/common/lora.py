"""What an engine's command line says about its LoRA capacity (vLLM's flags and defaults)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

VLLM_DEFAULT_MAX_LORAS = 1
VLLM_DEFAULT_MAX_LORA_RANK = 16


class LoraLimits(NamedTuple):
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int


NO_LORA = LoraLimits(0, 0, 0)


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The flag's last value (argparse keeps the last), in ``--flag V`` or ``--flag=V`` form."""
    found = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            found = argv[index + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def _int_flag(argv: Sequence[str], flag: str, default: int) -> int:
    value = _flag_value(argv, flag)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def lora_limits(argv: Sequence[str]) -> LoraLimits:
    """``--max-loras`` / ``--max-cpu-loras`` / ``--max-lora-rank`` of an engine command line, with vLLM's
    defaults; :data:`NO_LORA` without ``--enable-lora``."""
    if "--enable-lora" not in argv:
        return NO_LORA
    max_loras = _int_flag(argv, "--max-loras", VLLM_DEFAULT_MAX_LORAS)
    return LoraLimits(
        max_loras,
        _int_flag(argv, "--max-cpu-loras", max_loras),
        _int_flag(argv, "--max-lora-rank", VLLM_DEFAULT_MAX_LORA_RANK),
    )
