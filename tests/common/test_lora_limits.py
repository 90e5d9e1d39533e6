"""LoRA capacity read from an engine's command line, as the orchestrator announces it in PodInfo."""

from brixmesh.common.lora import NO_LORA, LoraLimits, lora_limits


def test_flags_defaults_and_last_value_wins() -> None:
    assert lora_limits(["vllm", "serve", "m"]) == NO_LORA
    assert lora_limits(["--enable-lora"]) == LoraLimits(1, 1, 16)
    argv = ["--enable-lora", "--max-loras", "2", "--max-lora-rank=8", "--max-loras", "4"]
    assert lora_limits(argv) == LoraLimits(4, 4, 8)
    assert lora_limits([*argv, "--max-cpu-loras", "32"]) == LoraLimits(4, 32, 8)
    assert lora_limits(["--enable-lora", "--max-loras", "many"]) == LoraLimits(1, 1, 16)
