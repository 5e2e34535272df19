"""`animllm chat`: conversations, images, the REPL."""
