"""`animllm chat`: a REPL against the gateway (or any OpenAI-compatible --url), or one
answer for a script."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from animllm_cli.cli import common

if TYPE_CHECKING:
    from animllm_cli.output import Message


def chat(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model name, alias or task (default: default_model).",
                                                   autocompletion=common.complete_models, show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", metavar="PROMPT", help="Ask once, print the answer, exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", metavar="PROMPT", help="System prompt.")] = None,
    images: Annotated[Optional[list[str]], typer.Option("--image", metavar="PATH", help="Attach an image (repeatable).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", metavar="T", min=0.0, max=2.0,
                                                         help="Sampling temperature (default: the server's).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", metavar="N", min=1,
                                                     help="Longest answer in tokens (default: the server's).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Sampling seed, for a repeatable answer.")] = None,
    url: common.UrlOption = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", metavar="NAME",
                                                       help="Environment variable holding the API key.")] = None,
    endpoint: Annotated[str, typer.Option("--endpoint", metavar="chat|messages|responses",
                                          help="The API to speak: chat (chat completions), messages (Anthropic's "
                                               "Messages API) or responses (OpenAI's Responses API).")] = "chat",
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="A REPL even when stdin is not a terminal.")] = False,
    json_output: common.JsonOption = False,
    config: common.ConfigOption = None,
) -> None:
    """Talk to a model: a REPL, or one answer for a script.

    In a terminal a REPL; with -p or a prompt on stdin, only the answer on stdout."""
    import os

    from animllm_cli.chat.conversation import Conversation
    from animllm_cli.client.chat_apis import CHAT_APIS
    from animllm_cli.client.openai import OpenAIClient
    from animllm_cli.errors import UsageError

    if endpoint not in CHAT_APIS:
        raise UsageError(f"--endpoint {endpoint!r}: expected one of {', '.join(CHAT_APIS)}")

    out = common.output(ctx)
    loaded = common.load(ctx, config)
    base_url = url or common.gateway_url(loaded)
    key = os.environ.get(api_key_env or loaded.config.server.api_key_env)
    client = OpenAIClient(base_url, key, timeout_s=loaded.config.limits.request_timeout_s + 30,
                          api=CHAT_APIS[endpoint])
    resolve = common.model_resolver(loaded, url=url)
    name, vision = resolve(model)
    conversation = Conversation(name, system=system, vision=vision,
                                params={"temperature": temperature, "max_tokens": max_tokens, "seed": seed})
    for path in images or []:
        conversation.attach(path)

    piped = not sys.stdin.isatty()
    if prompt is not None or (piped and not interactive):
        parts = (prompt, sys.stdin.read() if piped else None)
        text = "\n\n".join(part.strip() for part in parts if part and part.strip())
        if not text.strip():
            raise UsageError("empty prompt", hint="pass -p TEXT or pipe the prompt on stdin")
        raise typer.Exit(_one_shot(out, client, conversation.user(text), json_output))

    from animllm_cli.chat.repl import Repl

    fancy = sys.stdin.isatty() and sys.stdout.isatty()
    switch = None if url else _switcher(loaded, out)
    read_line = _readline_input() if fancy else _plain_input
    raise typer.Exit(Repl(conversation, client, out, read_line=read_line, fancy=fancy, resolve=resolve,
                          switch=switch).run())


def _one_shot(out, client, payload: dict, json_output: bool) -> int:
    from animllm_cli.chat.repl import stats_line, stream_plain
    from animllm_cli.output import styled

    if json_output:
        out.json(client.chat(payload).response)
        return 0
    result = stream_plain(client, payload, lambda delta: (sys.stdout.write(delta), sys.stdout.flush()),
                          lambda note: out.info(styled(note, "dim")))  # on stderr: stdout is the answer
    sys.stdout.write("\n")
    out.info(styled(stats_line(result), "dim"))
    return 0


def _switcher(loaded, out):
    from animllm_cli.client.admin import AdminClient, NotRunning
    from animllm_cli.output import styled

    def switch(name: str) -> Message | None:
        try:
            client = AdminClient.find(loaded.config.server.api_key_env)
        except NotRunning:
            return None
        with out.status(f"switching to {name}…"):
            report = client.switch(name)
        if report.outcome == "already loaded":
            return None
        if report.outcome == "remote":  # nothing to load: the gateway says where it is served
            return styled(" ".join(report.notes), "dim")
        return styled(f"switched {report.from_model or '-'} -> {name} in {report.total_s or 0:.1f}s", "dim")

    return switch


def _plain_input(prompt: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def _readline_input():
    """input() with line editing and a history file kept in the state dir."""
    import atexit

    from animllm_cli import paths

    try:
        import readline
    except ImportError:  # not on every platform
        return input
    history = paths.state_dir() / "chat_history"
    try:
        paths.private_file(history)  # 0600 in a 0700 dir before readline writes to it
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(2000)
    atexit.register(_write_history, readline, history)
    return input


def _write_history(readline, history) -> None:
    from animllm_cli import paths

    try:
        readline.write_history_file(history)
        paths.private_file(history)  # whatever mode readline (or libedit) gave a new file
    except OSError:
        pass
