"""`animllm top`: a live view of the GPUs, the engines and the gateway's queue.

snapshot.py gathers one reading (NVML here, the gateway's /admin/status and /metrics) and
turns two readings into figures (tokens/s); render.py draws a snapshot for a width;
view.py runs the refresh loop, the keys and the terminal modes.
"""
