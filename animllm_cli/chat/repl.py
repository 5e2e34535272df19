"""The interactive chat loop. Input and output are handed in, so a test can script a whole
session through stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from animllm_cli.chat.conversation import Conversation
from animllm_cli.client.openai import ChatResult, OpenAIClient
from animllm_cli.errors import AnimllmError
from animllm_cli.output import Output, styled

if TYPE_CHECKING:
    from animllm_cli.output import Message

HELP = """commands:
  /help            this list
  /model NAME      talk to another model (the gateway switches to it)
  /system TEXT     set the system prompt (/system alone clears it)
  /image PATH      attach an image to your next message (vision models)
  /clear           forget the conversation so far
  /save FILE       save the conversation (.json: messages; otherwise Markdown)
  /exit            leave (or Ctrl-D); Ctrl-C stops an answer and keeps the session"""


def stats_line(result: ChatResult) -> str:
    parts = [f"{result.completion_tokens or 0} tokens"]
    if result.ttft_s is not None:
        parts.append(f"TTFT {result.ttft_s:.2f}s")
    if result.tokens_per_s:
        parts.append(f"{result.tokens_per_s:.1f} tok/s")
    parts.append(f"{result.elapsed_s:.2f}s")
    if result.model:
        parts.append(result.model)
    return " · ".join(parts)


def stream_plain(client: OpenAIClient, payload: dict, write: Callable[[str], None],
                 on_wait: Callable[[str], None] | None = None) -> ChatResult:
    result = ChatResult()
    for delta in client.chat_stream(payload, result, on_wait):
        write(delta)
    return result


def stream_markdown(client: OpenAIClient, payload: dict, out: Output) -> ChatResult:
    """Show the answer as it arrives, rendered as Markdown; before it, what the request
    waits for ("loading coder… 12 s"), in place."""
    from rich.markdown import Markdown
    from rich.text import Text

    result = ChatResult()
    with out.live(Markdown("")) as live:
        def waiting(note: str) -> None:
            live.update(Text(note, style="dim"))

        for _ in client.chat_stream(payload, result, waiting):
            live.update(Markdown(result.text))
    return result


class Repl:
    def __init__(self, conversation: Conversation, client: OpenAIClient, out: Output, *,
                 read_line: Callable[[str], str], fancy: bool,
                 resolve: Callable[[str], tuple[str, bool | None]],
                 switch: Callable[[str], Message | None] | None = None) -> None:
        self.conv, self.client, self.out = conversation, client, out
        self.read_line, self.fancy = read_line, fancy
        self.resolve, self.switch = resolve, switch

    def run(self) -> int:
        self.out.info(f"chatting with {self.conv.model}; /help for commands, Ctrl-D to leave")
        while True:
            try:
                line = self.read_line(f"{self.conv.model}> " if self.fancy else "")
            except EOFError:
                return 0
            except KeyboardInterrupt:
                self.out.info("")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "exit":
                    return 0
                continue
            self.ask(line)

    def ask(self, text: str) -> None:
        payload = self.conv.user(text)
        try:
            if self.fancy:
                result = stream_markdown(self.client, payload, self.out)
            else:
                result = stream_plain(self.client, payload, lambda d: (sys.stdout.write(d), sys.stdout.flush()),
                                      lambda note: self.out.info(styled(note, "dim")))
                sys.stdout.write("\n")
        except KeyboardInterrupt:
            self.conv.drop_last_question()
            self.out.info(styled("(answer cancelled)", "dim"))
            return
        except AnimllmError as exc:
            self.conv.drop_last_question()
            self.out.error(exc.message, exc.hint)
            return
        self.conv.answered(result.text)
        self.out.info(styled(stats_line(result), "dim"))

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if name in ("/exit", "/quit"):
                return "exit"
            if name == "/help":
                self.out.info(HELP)
            elif name == "/model":
                self._model(arg)
            elif name == "/system":
                self.conv.system = arg or None
                self.out.info(f"system prompt {'set' if arg else 'cleared'}")
            elif name == "/image":
                if not arg:
                    raise AnimllmError("usage: /image PATH")
                self.conv.attach(arg)
                self.out.info(f"attached {arg} to your next message")
            elif name == "/clear":
                self.conv.clear()
                self.out.info("conversation cleared")
            elif name == "/save":
                if not arg:
                    raise AnimllmError("usage: /save FILE")
                self.conv.save(Path(arg).expanduser())
                self.out.info(f"saved to {arg}")
            else:
                self.out.error(f"unknown command {name}; /help lists them")
        except AnimllmError as exc:
            self.out.error(exc.message, exc.hint)
        except OSError as exc:
            self.out.error(f"{exc.strerror}: {exc.filename}")
        return None

    def _model(self, wanted: str) -> None:
        if not wanted:
            self.out.info(f"talking to {self.conv.model}")
            return
        name, vision = self.resolve(wanted)
        if self.switch is not None:
            note = self.switch(name)
            if note:
                self.out.info(note)
        self.conv.model, self.conv.vision = name, vision
        self.out.info(f"now talking to {name}")
