"""`animllm bench`: a load generator and the metrics vLLM's serving benchmark reports."""
