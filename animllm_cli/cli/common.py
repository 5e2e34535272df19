"""Options and helpers shared by the commands. Nothing heavy is imported here at module
level: `animllm --help` must stay fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from animllm_cli.output import Output

if TYPE_CHECKING:
    from animllm_cli.config import LoadedConfig, Overrides


@dataclass
class AppState:
    config: Optional[Path] = None
    output: Output = field(default_factory=Output)


ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", metavar="PATH", show_default=False,
                 help="Config file (also ANIMLLM_CONFIG). Accepted before or after the command."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", show_default=False,
                 help="Override any config key, e.g. --set server.port=9000 (repeatable)."),
]
GpuUtilOption = Annotated[
    Optional[float],
    typer.Option("--gpu-memory-utilization", metavar="F", show_default=False, help="Override the model's gpu_memory_utilization."),
]
MaxModelLenOption = Annotated[
    Optional[int],
    typer.Option("--max-model-len", metavar="N", show_default=False, help="Override the model's max_model_len."),
]

# The bench family (`bench`, `bench-mix`, `bench-compare`): each option spelt once.
def _save_file(path: Optional[Path]) -> Optional[Path]:
    if path is not None and str(path) == "-":  # else a file named "-"; the JSON on stdout is --json
        raise typer.BadParameter("'-' is not a file: --save writes one; for the JSON on stdout, use --json")
    return path


SaveOption = Annotated[Optional[Path], typer.Option("--save", metavar="FILE", show_default=False, callback=_save_file,
                                                    help="Also write the JSON to FILE (what bench-compare reads).")]
PlotOption = Annotated[Optional[Path], typer.Option(
    "--plot", metavar="FILE", show_default=False,
    help="Draw the results into FILE.png or FILE.svg (needs the extra animllm-cli[plot]).")]
BurstinessOption = Annotated[float, typer.Option(
    "--burstiness", metavar="B", min=0.0, help="Gamma shape of the gaps between arrivals, as vLLM's: 1 Poisson, below 1 "
                                  "burstier, above 1 steadier.")]
RampUpOption = Annotated[Optional[str], typer.Option(
    "--ramp-up", metavar="linear|exponential:START:END", show_default=False,
    help="One level whose rate climbs from START to END req/s over the requests, e.g. linear:1:10.")]
RequestsOption = Annotated[Optional[int], typer.Option(
    "--requests", "-n", metavar="N", min=1, show_default=False,
    help="Requests per level (bench-mix: in all; default 20; with --prompts: the file's count).")]
InputLenOption = Annotated[int, typer.Option(
    "--input-len", metavar="N", min=1, help="Prompt length in the model's tokens (random prompts; words in bench-mix).")]
OutputLenOption = Annotated[int, typer.Option(
    "--output-len", metavar="N", min=1, help="Tokens generated per request; given, it beats the lengths in a --prompts file.")]
IgnoreEosOption = Annotated[bool, typer.Option("--ignore-eos/--no-ignore-eos",
                                               help="Generate every requested token (vLLM's ignore_eos).")]
PromptsOption = Annotated[Optional[Path], typer.Option(
    "--prompts", metavar="FILE", show_default=False,
    help="Your own prompts: JSONL of {\"prompt\"} or {\"messages\"} (with optional output_tokens), or ShareGPT JSON.")]
EndpointOption = Annotated[Optional[str], typer.Option(
    "--endpoint", metavar="completions|chat|messages|responses", show_default=False,
    help="Where requests go: completions, chat, messages (Anthropic's Messages API) or responses (OpenAI's "
         "Responses API). Default: chat for a file of chat messages, else completions.")]
GoodputOption = Annotated[Optional[list[str]], typer.Option(
    "--goodput", metavar="ttft:MS tpot:MS e2el:MS", show_default=False,
    help="SLOs, as vLLM's: report the requests that met them all (goodput).")]
SeedOption = Annotated[int, typer.Option("--seed", metavar="N", help="Seed of prompts, arrivals and bench-mix's choice of model.")]
SamplesOption = Annotated[bool, typer.Option("--samples", help="Include every request's timings in the JSON.")]
CheckOption = Annotated[bool, typer.Option("--check", help="Exit 1 when a result misses the config's expectations.")]
UrlOption = Annotated[Optional[str], typer.Option("--url", metavar="URL", help="Any OpenAI-compatible server instead of the gateway.")]


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj


def output(ctx: typer.Context) -> Output:
    return state(ctx).output


def model_overrides(sets: list[str] | None = None, model: str | None = None, *,
                    gpu_memory_utilization: float | None = None, max_model_len: int | None = None) -> Overrides:
    from animllm_cli.config import Overrides

    settings = {}
    if gpu_memory_utilization is not None:
        settings["gpu_memory_utilization"] = (gpu_memory_utilization,
                                              f"--gpu-memory-utilization {gpu_memory_utilization}")
    if max_model_len is not None:
        settings["max_model_len"] = (max_model_len, f"--max-model-len {max_model_len}")
    return Overrides(sets=list(sets or []), settings=settings, model=model)


def load(ctx: typer.Context, config: Path | None, overrides: Overrides | None = None) -> LoadedConfig:
    """The effective config; a --config after the command beats one before it."""
    from animllm_cli.config import load_config

    app_state = state(ctx)
    loaded = load_config(config or app_state.config, overrides=overrides)
    for file in loaded.files:
        app_state.output.debug(f"config file: {file}")
    return loaded


def gateway_url(loaded: LoadedConfig) -> str:
    """The running gateway's URL, else where the config says it would listen."""
    from animllm_cli.runfile import read_state

    state = read_state()
    if state:
        return state.url
    server = loaded.config.server
    return f"http://{server.host}:{server.port}"


def model_resolver(loaded: LoadedConfig, *, url: str | None = None):
    """Name and vision flag for what the user typed (None: the default model), by the
    catalogue's rule with the gateway's loaded models first, as the gateway resolves a
    request. Unknown names pass through as typed: the server gives the authoritative
    answer (it lists what it has). With `url` (another server) nothing counts as loaded."""
    catalogue = loaded.catalogue
    resident = None

    def resolve(wanted: str | None) -> tuple[str, bool | None]:
        nonlocal resident
        if wanted is None:
            wanted = catalogue.resolve(None)
        if resident is None:
            resident = () if url else loaded_models(loaded)
        name = catalogue.find(wanted, loaded=resident)
        if name is None:
            return wanted, None
        return name, "vision" in catalogue.tasks(name)

    return resolve


def loaded_models(loaded: LoadedConfig) -> tuple[str, ...]:
    """What the running gateway has loaded now; nothing when none answers quickly."""
    import httpx

    from animllm_cli.credentials import bearer
    from animllm_cli.bind import api_key
    from animllm_cli.runfile import read_state

    state = read_state()
    if state is None:
        return ()
    try:
        reply = httpx.get(f"{state.url}/v1/models", headers=bearer(api_key(loaded)), timeout=5)
        return tuple(item["id"] for item in reply.json()["data"] if item.get("loaded"))
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return ()


def complete_models(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Shell completion for model arguments: names, aliases and tasks from the user's config."""
    try:
        from animllm_cli.config import load_config

        root = ctx.find_root()
        config = ctx.params.get("config") or root.params.get("config")
        loaded = load_config(config)
    except Exception:  # a broken config must not break the shell
        return []
    return [(word, help_text) for word, help_text in loaded.catalogue.words() if word.startswith(incomplete)]
