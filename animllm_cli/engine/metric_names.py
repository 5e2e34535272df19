"""The names vLLM gives the figures on its /metrics that animllm reads: the gateway's
admission (KV cache use) and `top` (requests running and waiting, tokens generated)."""

# vLLM's KV cache use (0..1), by its name since v1, and by the name older versions gave it.
KV_CACHE_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
GENERATED = "vllm:generation_tokens_total"  # a counter: tokens/s is its difference over time
