"""The configuration schema: every section, key, type and allowed range.

Unknown keys are errors (`extra="forbid"`). Cross-section rules (a model's profile must
exist, aliases must be unique, ...) live in `loader.check_references`, because they need
to point at the exact key that breaks them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlsplit, urlunsplit

from pydantic_core import PydanticCustomError
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Alias = Annotated[str, StringConstraints(pattern=ALIAS_PATTERN)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Fraction = Annotated[float, Field(gt=0, le=1)]
PositiveInt = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _env_value(item: Any) -> Any:
    # YAML reads `1` as a number and `yes` as a boolean; the environment only has strings.
    if isinstance(item, bool):
        raise ValueError(f"got boolean {str(item).lower()}; environment values are strings, "
                         f"write it in quotes (for example '1' or 'true')")
    return str(item) if isinstance(item, (int, float)) else item


EnvValue = Annotated[str, BeforeValidator(_env_value)]
ExtraArgValue = Optional[str | int | float | bool | list[str | int | float] | dict[str, Any]]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class EngineSettings(Section):
    """Keys that map one-to-one to vLLM server flags (`max_model_len` -> `--max-model-len`).

    None means "not set": the flag is left out and vLLM's own default applies.
    Field order is the order of the flags on the engine command line.
    """

    gpu_memory_utilization: Optional[Fraction] = None
    max_model_len: Optional[PositiveInt] = None
    max_num_batched_tokens: Optional[PositiveInt] = None
    max_num_seqs: Optional[PositiveInt] = None
    dtype: Optional[Literal["auto", "half", "float16", "bfloat16", "float", "float32"]] = None
    quantization: Optional[str] = None
    kv_cache_dtype: Optional[str] = None
    cpu_offload_gb: Optional[Annotated[float, Field(ge=0)]] = None
    enable_prefix_caching: Optional[bool] = None
    enable_chunked_prefill: Optional[bool] = None
    enforce_eager: Optional[bool] = None
    block_size: Optional[PositiveInt] = None
    tokenizer: Optional[str] = None
    revision: Optional[str] = None
    trust_remote_code: Optional[bool] = None
    limit_mm_per_prompt: Optional[dict[str, Annotated[int, Field(ge=0)]]] = None
    seed: Optional[int] = None
    tensor_parallel_size: Optional[PositiveInt] = None
    # Across machines, vLLM's own way: a Ray cluster (RAY_ADDRESS in `env`), each pipeline
    # stage on another node. animllm launches the head; Ray places the rest.
    pipeline_parallel_size: Optional[PositiveInt] = None
    distributed_executor_backend: Optional[Literal["ray", "mp", "uni", "external_launcher"]] = None


ENGINE_SETTING_KEYS: tuple[str, ...] = tuple(EngineSettings.model_fields)


class Tunables(EngineSettings):
    """What a profile sets and a model may override: the engine flags plus gateway limits."""

    concurrency: Optional[PositiveInt] = Field(
        default=None, description="requests the gateway sends to this engine at once; more wait in the queue")


TUNABLE_KEYS: tuple[str, ...] = tuple(Tunables.model_fields)


class Profile(Tunables):
    pass


# Ollama's meaning: -1 keeps the model loaded until it is evicted, 0 unloads it once idle.
KeepAlive = Annotated[float, Field(ge=-1)]


def _sleep_value(item: Any) -> Any:
    # YAML 1.1 reads a bare `off` as the boolean false.
    if item is False:
        return "off"
    if item is True:
        raise ValueError("got boolean true; write auto, off, 1 or 2")
    return item


# vLLM's sleep mode as the pool's eviction: auto (level 1 while host RAM holds the weights,
# else level 2 where it is known to wake correctly, else stop) | off (always stop) | 1 | 2.
SleepSetting = Annotated[Literal["auto", "off", 1, 2], BeforeValidator(_sleep_value)]


Seconds = Annotated[float, Field(gt=0)]


def _url_list(item: Any) -> Any:
    return [item] if isinstance(item, str) else item


def _base_url(url: str) -> str:
    """A server's base URL as the relay joins paths to it: http(s), a host, no credentials,
    query or fragment (keys live in api_key_env), a trailing `/v1` and `/` dropped."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.username or parts.password:  # not echoed: the value is a secret
        raise PydanticCustomError("url_not_echoed", "the URL carries credentials (user:password@), which would "
                                                        "show in logs and listings; put the key in the variable "
                                                        "named by api_key_env")
    if parts.query or parts.fragment:  # not echoed: a query often carries a key (`?api-key=`)
        raise PydanticCustomError("url_not_echoed", "the URL has a query or fragment, which often carries a key "
                                                    "and would show in logs and listings; give the server's base "
                                                    "URL and the key in api_key_env")
    try:
        parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    path = parts.path.rstrip("/")
    path = path[:-3] if path.endswith("/v1") else path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


BaseUrl = Annotated[str, AfterValidator(_base_url)]


class UpstreamSpec(Section):
    """A model served elsewhere: one or more OpenAI-compatible servers (vLLM on another
    machine, a Ray cluster's head, another animllm gateway). The gateway relays to them and
    never loads or evicts them."""

    urls: Annotated[list[BaseUrl], Field(min_length=1), BeforeValidator(_url_list)] = Field(
        description="base URLs (`/v1` optional); requests go to the least busy healthy one")
    model: Optional[str] = Field(default=None, description="the model's name on that server (null: this model's name)")
    api_key_env: Optional[EnvName] = Field(
        default=None, description="environment variable holding that server's key (never the key itself)")
    verify_tls: bool = True
    ca_bundle: Optional[str] = Field(default=None, description="CA certificates (PEM) to verify the server with")
    connect_timeout_s: Seconds = 10.0
    first_byte_timeout_s: Optional[Seconds] = None  # null: limits.first_byte_timeout_s
    idle_timeout_s: Optional[Seconds] = None        # null: limits.idle_timeout_s
    health_interval_s: Seconds = 10.0               # GET /v1/models on each URL this often
    health_timeout_s: Seconds = 5.0


class ModelSpec(Tunables):
    source: Optional[str] = Field(default=None, description="Hugging Face repo id, or a local directory (relative to "
                                                            "the config file)")
    upstream: Optional[UpstreamSpec] = Field(default=None, description="served elsewhere, instead of `source`")
    profile: Optional[Name] = None
    tasks: list[Name] = []
    aliases: list[Alias] = []
    description: Optional[str] = None
    extra_args: dict[str, ExtraArgValue] = Field(
        default={}, description="further vLLM flags, passed through as --key value")
    # The engine pool (gateway/pool.py): where the model goes and how long it stays.
    share: Optional[Fraction] = Field(
        default=None, description="gpu_memory_utilization when resident beside others (null: the planner's smallest "
                                  "share that holds max_model_len, when the model can share a card at all)")
    gpus: Optional[list[Annotated[int, Field(ge=0)]]] = Field(
        default=None, description="GPU indices (NVML order) to run on; null: the GPU with room, by the plan")
    pin: bool = Field(default=False, description="never evicted to make room for another model")
    keep_alive: Optional[KeepAlive] = Field(
        default=None, description="seconds an idle model stays loaded; -1 forever, 0 unload when idle (null: pool.keep_alive)")
    sleep: SleepSetting = Field(
        default="auto", description="how it leaves the card when evicted: auto, off (stop the engine), 1 (weights to "
                                    "host RAM) or 2 (weights dropped); vLLM sleep mode, CUDA builds only")

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a Hugging Face repo id or a local directory")
        return value

    @property
    def remote(self) -> bool:
        return self.upstream is not None


# What applies only to a model whose engine animllm runs (a remote model setting one is an error).
LOCAL_ONLY_KEYS: tuple[str, ...] = (*ENGINE_SETTING_KEYS, "source", "extra_args", "share", "gpus", "pin",
                                    "keep_alive", "sleep")


class GpuSection(Section):
    expect_name: Optional[str] = None
    vram_gib: Optional[Annotated[float, Field(gt=0)]] = None
    compute_capability: Optional[Annotated[str, StringConstraints(pattern=r"^\d+\.\d+$")]] = None
    architecture: Optional[str] = None


class RuntimeSection(Section):
    torch: Optional[str] = None
    cuda: Optional[str] = None
    forbid_packages: list[str] = []


class EngineSection(Section):
    python: Optional[str] = Field(default=None, description="interpreter that runs vLLM; default: the one running animllm")
    module: str = "vllm.entrypoints.openai.api_server"
    port: Port = 8100
    # Sized for a 14B model's cold start on a desktop card (imports, weights from disk,
    # torch.compile, CUDA graphs), not for the tiny test models.
    start_timeout_s: Seconds = 1200.0     # overall limit from launch to /health 200
    stall_timeout_s: Seconds = 300.0      # no new engine output for this long during start: killed
    stop_grace_s: Seconds = 15.0          # SIGTERM, then SIGKILL to the process group after this
    vram_release_timeout_s: Seconds = 60.0  # after stop, wait this long for NVML to free the memory
    health_interval_s: Seconds = 2.0      # liveness probe period once ready
    health_failures: PositiveInt = 3      # consecutive failed probes that mark the engine dead
    log_max_bytes: PositiveInt = 20 * 1024 * 1024  # per model; one rotated file is kept beside it
    # The gateway keeps the next engine's interpreter started, its imports done (holding no
    # GPU memory): a cold start then skips the API server's Python start-up (engine/standby.py).
    standby: bool = Field(default=True, description="keep the next engine's interpreter pre-started "
                                                    "(imports done, no GPU memory) to shorten cold starts")


class PathsSection(Section):
    models: Optional[str] = None
    hf_cache: Optional[str] = None
    vllm_cache: Optional[str] = None
    torch_cache: Optional[str] = None


# Which environment variable each cache path is exported as, for the engine.
PATH_EXPORTS: dict[str, str] = {"hf_cache": "HF_HOME", "vllm_cache": "VLLM_CACHE_ROOT", "torch_cache": "TORCH_HOME"}


class LimitsSection(Section):
    vram_threshold: Fraction = 0.95
    # The seed's 300 s: no answer from the engine for this long fails the request. It is the
    # default of the first-byte and idle bounds; none of them cuts a long answer that flows.
    request_timeout_s: Seconds = 300.0
    queue_timeout_s: Optional[Seconds] = None      # a slot, a model load included (null: engine.start_timeout_s + request_timeout_s)
    first_byte_timeout_s: Optional[Seconds] = None  # sent to the engine until its answer starts (null: request_timeout_s)
    idle_timeout_s: Optional[Seconds] = None       # the longest gap between chunks of a stream (null: request_timeout_s)
    total_timeout_s: Optional[Seconds] = None      # the whole request from arrival (null: no bound)
    queue_max: PositiveInt = 64
    # Room for several 20 MiB images, base64-encoded (x 4/3) in one chat request.
    max_body_bytes: PositiveInt = 100 * 1024 * 1024


class ServerSection(Section):
    host: str = "127.0.0.1"
    port: Port = 8000
    api_key_env: EnvName = "ANIMLLM_API_KEY"
    switch_on_demand: bool = True   # false: a request for another model is refused, not switched to


Priority = Annotated[float, Field(ge=-1000, le=1000)]


class ClientSpec(Section):
    """A tool or person the gateway serves (`clients:`): its key and what it may do. Its key
    comes from the variable `api_key_env` names, or from `animllm keys create NAME` (kept as
    a hash); never from this file."""
    api_key_env: Optional[EnvName] = Field(default=None, description="the variable holding its key "
                                                                     "(null: only keys made by `animllm keys create`)")
    priority: Priority = Field(default=0.0, description="its requests' priority when they name none")
    priority_max: Optional[Priority] = Field(default=None, description="the most a request of its may ask "
                                                                       "(null: priority)")
    models: list[str] = Field(default=[], description="the models, aliases or tasks it may use (empty: all)")
    concurrency: Optional[PositiveInt] = Field(default=None, description="its requests running at once, all models")
    requests_per_minute: Optional[Annotated[float, Field(gt=0)]] = None
    tokens_per_minute: Optional[PositiveInt] = Field(default=None, description="tokens in and out, per minute")
    queue_share: Optional[Fraction] = Field(default=None, description="the share of limits.queue_max it may fill")
    weight: Annotated[float, Field(gt=0)] = Field(default=1.0, description="its share of a model's slots against "
                                                                          "the other clients waiting for it")
    admin: bool = Field(default=False, description="may call the admin routes (switch, unload, stop, status)")


class SchedulerSection(Section):
    # Time-limited exhaustive service (see gateway/scheduler.py): the loaded model keeps the
    # card while it has work, until a request for another model has waited max_wait_s.
    policy: Literal["batch", "fifo"] = "batch"   # fifo: strict arrival order, one switch per interleaved request
    max_wait_s: Annotated[float, Field(ge=0)] = 60.0
    batch_factor: Annotated[float, Field(ge=1)] = 4.0  # a model with this many times the waiters goes first


class PoolSection(Section):
    # Every model that fits stays loaded (see gateway/pool.py); the rest are evicted LRU.
    max_engines: Optional[PositiveInt] = None   # at most this many resident at once (null: as many as fit)
    keep_alive: KeepAlive = -1.0                # the default of each model's keep_alive
    preload: list[str] = []                     # models loaded when the gateway starts, in order
    # Host RAM that level-1 sleepers leave free for everything else on the machine.
    sleep_ram_margin_gib: Annotated[float, Field(ge=0)] = 4.0


class SloSection(Section):
    # What a good request is, as vLLM's `--goodput ttft:MS tpot:MS e2el:MS` says it.
    ttft_ms: Optional[Annotated[float, Field(ge=0)]] = None
    tpot_ms: Optional[Annotated[float, Field(ge=0)]] = None
    e2el_ms: Optional[Annotated[float, Field(ge=0)]] = None


class Expectation(Section):
    ttft_s_max: Optional[Annotated[float, Field(gt=0)]] = None
    tokens_per_s_min: Optional[Annotated[float, Field(gt=0)]] = None
    switch_s_max: Optional[Annotated[float, Field(gt=0)]] = None
    slo: Optional[SloSection] = None    # bench reports goodput against it (--goodput beats it)
    good_share_min: Optional[Annotated[float, Field(gt=0, le=1)]] = None  # --check: share of requests meeting slo


class AnimllmConfig(Section):
    gpu: GpuSection = GpuSection()
    runtime: RuntimeSection = RuntimeSection()
    engine: EngineSection = EngineSection()
    env: dict[EnvName, Optional[EnvValue]] = {}  # null removes a variable that a lower layer set
    paths: PathsSection = PathsSection()
    profiles: dict[Name, Profile] = {}
    models: dict[Name, ModelSpec] = {}
    default_model: Optional[str] = None
    limits: LimitsSection = LimitsSection()
    server: ServerSection = ServerSection()
    scheduler: SchedulerSection = SchedulerSection()
    pool: PoolSection = PoolSection()
    expectations: dict[Name, Expectation] = {}
    clients: dict[Name, ClientSpec] = {}  # once any is named, every route but /health needs a client's key
