"""Known vLLM failure lines turned into a plain message and a fix.

Ordered: the first rule that matches any line of the log decides. Unknown failures get
the log tail instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


@dataclass
class Diagnosis:
    kind: str
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    explain: Callable[[re.Match[str], "Context"], Diagnosis]


@dataclass
class Context:
    model: str
    port: int
    gpu_holders: Callable[[], str]   # "Xorg (pid 1, 300 MiB), ..." from NVML, called only when needed


def _kv_too_small(m: re.Match[str], ctx: Context) -> Diagnosis:
    estimate = m.group("estimate")
    return Diagnosis("kv-cache", f"the KV cache cannot hold one request at max_model_len {m.group('len')}"
                     + (f"; vLLM estimates the maximum model length is {estimate}" if estimate else ""),
                     f"set max_model_len: {estimate}" if estimate else
                     "lower max_model_len, set kv_cache_dtype: fp8, or raise gpu_memory_utilization (see `animllm plan`)")


def _no_cache_memory(m: re.Match[str], ctx: Context) -> Diagnosis:
    return Diagnosis("kv-cache", "no memory is left for the KV cache after loading the weights",
                     "use a quantised model (AWQ), raise gpu_memory_utilization, or lower max_num_batched_tokens "
                     "and max_num_seqs (see `animllm plan`)")


def _free_memory(m: re.Match[str], ctx: Context) -> Diagnosis:
    device = m.group("device").strip()
    return Diagnosis("free-memory", f"free memory on {device} ({m.group('free')}/{m.group('total')} GiB) is below "
                     f"what gpu_memory_utilization {m.group('util')} asks for ({m.group('want')} GiB)",
                     f"free it (held by: {ctx.gpu_holders()}) or lower gpu_memory_utilization")


def _cuda_oom(m: re.Match[str], ctx: Context) -> Diagnosis:
    return Diagnosis("out-of-memory", f"out of GPU memory while starting: {m.group(0).strip()[:200]}",
                     "lower gpu_memory_utilization, max_num_batched_tokens or max_num_seqs, or set enforce_eager "
                     f"(held by: {ctx.gpu_holders()})")


def _not_found(m: re.Match[str], ctx: Context) -> Diagnosis:
    return Diagnosis("model-not-found", f"the model or tokenizer for '{ctx.model}' cannot be found: {m.group(0).strip()[:200]}",
                     "check `source:` (a local directory or an existing Hugging Face repo id); for a gated "
                     "repo set HF_TOKEN in the environment or in .env beside the config")


def _port_in_use(m: re.Match[str], ctx: Context) -> Diagnosis:
    return Diagnosis("port-in-use", f"port {ctx.port} on 127.0.0.1 is already in use",
                     "stop what holds it or set engine.port to a free port")


def _rejected_setting(m: re.Match[str], ctx: Context) -> Diagnosis:
    return Diagnosis("unsupported-setting", f"vLLM rejected a setting: {m.group('what').strip()[:300]}",
                     "fix the setting in the config (`animllm config show MODEL --explain` shows where it comes from)")


RULES: list[Rule] = [
    Rule("kv-cache", re.compile(r"max seq len \((?P<len>\d+)\).*?(estimated maximum model length is (?P<estimate>\d+))?\. Try"),
         _kv_too_small),
    Rule("kv-cache", re.compile(r"No available memory for the cache blocks"), _no_cache_memory),
    Rule("free-memory", re.compile(r"(Free memory on device|Available memory on) (?P<device>.*?) \((?P<free>[\d.]+)/"
                                   r"(?P<total>[\d.]+) GiB\) on startup is less than desired \w+ memory utilization "
                                   r"\((?P<util>[\d.]+), (?P<want>[\d.]+) GiB\)"), _free_memory),
    Rule("out-of-memory", re.compile(r"CUDA out of memory.*|OutOfMemoryError.*"), _cuda_oom),
    Rule("model-not-found", re.compile(r"(Repository Not Found|RepositoryNotFoundError|GatedRepoError|"
                                       r"is not a local folder and is not a valid model identifier|"
                                       r"does not appear to have a file named config\.json|"
                                       r"Can't load the configuration of|Invalid repository ID or local directory|"
                                       r"No such file or directory: .*(config\.json|tokenizer)).*"), _not_found),
    Rule("port-in-use", re.compile(r"[Aa]ddress already in use|Errno 98"), _port_in_use),
    # pydantic's validation errors put the reason on their own "Value error, ..." line.
    Rule("unsupported-setting", re.compile(r"Value error, (?P<what>.*)"), _rejected_setting),
    Rule("unsupported-setting", re.compile(r"(?P<what>(ValueError|TypeError|NotImplementedError|"
                                           r"pydantic_core\._pydantic_core\.ValidationError|"
                                           r"api_server\.py: error|error: argument|unrecognized arguments)\b.*)"),
         _rejected_setting),
]


def diagnose(lines: list[str], ctx: Context) -> Diagnosis | None:
    for rule in RULES:
        for line in lines:
            match = rule.pattern.search(line)
            if match:
                return rule.explain(match, ctx)
    return None


def failure_line(lines: list[str]) -> tuple[str, str] | None:
    """The latest line that names a known failure, with its rule's kind: what an engine
    that died after ready last said about it (an out-of-memory, say)."""
    for line in reversed(lines):
        rule = next((r for r in RULES if r.pattern.search(line)), None)
        if rule is not None:
            return rule.kind, line.strip()[:300]
    return None
