"""LoRA adapters: registry, placement, load/unload on engines."""
