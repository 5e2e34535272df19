"""What the GPU is and what fits on it: the NVML probe, model facts, the VRAM fit planner."""
