"""`bench --prompts FILE`: a studio's own requests.

- JSONL (any name but *.json): one object a line, blank lines skipped, each with `prompt`
  (text; vLLM's `custom` dataset format) or `messages` (chat messages), and optionally
  `output_tokens` (vLLM's name) or `max_tokens`.
- ShareGPT (*.json): a list of `{"conversations": [{"from": ..., "value": ...}, ...]}`.
  As vLLM's ShareGPTDataset: entries with fewer than two turns are skipped, the first
  turn is the prompt and the second the answer, whose length (counted by the server's
  tokenizer) is the output length. Unlike it, nothing is dropped for being short or long
  (its pruning serves a public dataset; a studio's own file is sent as it is) and the
  order is kept (bench's --seed does not shuffle a file the user wrote in order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from animllm_cli.errors import UsageError

FORMATS = ('JSONL: one {"prompt": "..."} or {"messages": [...]} a line, optional "output_tokens"; '
           'or ShareGPT JSON (*.json): [{"conversations": [{"from": "human", "value": "..."}, ...]}]')


@dataclass(frozen=True)
class PromptEntry:
    prompt: str | None = None
    messages: list[dict] | None = None
    output_tokens: int | None = None
    reference: str | None = None    # ShareGPT's answer: its token count is the output length
    line: int | None = None         # where it came from (a JSONL line, a JSON entry's index)


def read_prompts(path: Path) -> list[PromptEntry]:
    try:
        entries = _sharegpt(path) if path.suffix.lower() == ".json" else list(_jsonl(path))
    except OSError as exc:
        raise UsageError(f"--prompts {path}: cannot read it ({exc.strerror or exc})",
                         hint="check the path and that the file is readable") from None
    if not entries:
        raise UsageError(f"--prompts {path}: no prompts in it", hint=FORMATS)
    return entries


def has_messages(entries: list[PromptEntry]) -> bool:
    return any(entry.messages is not None for entry in entries)


def _jsonl(path: Path) -> Iterator[PromptEntry]:
    # Bytes, decoded a line at a time: a big file streams, and bad UTF-8 is found on its line.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"--prompts {path}, line {number}"
            text = _decode(raw, where, first=number == 1)
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except ValueError as exc:
                raise UsageError(f"{where}: not JSON ({exc.msg}): {_cut(text.strip())}", hint=FORMATS) from None
            yield _entry(item, where, number)


def _decode(raw: bytes, where: str, *, first: bool) -> str:
    try:
        # utf-8-sig on the first line: editors on Windows start a file with a byte-order mark.
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text (byte {exc.start + 1}: {raw[exc.start:exc.start + 4]!r})",
                         hint="save the file as UTF-8") from None


def _entry(item: Any, where: str, number: int) -> PromptEntry:
    if not isinstance(item, dict):
        raise UsageError(f"{where}: expected an object, found {_cut(json.dumps(item))}", hint=FORMATS)
    prompt, messages = item.get("prompt"), item.get("messages")
    if prompt is None and messages is None:
        raise UsageError(f"{where}: neither \"prompt\" nor \"messages\" in {_cut(json.dumps(item))}", hint=FORMATS)
    if prompt is not None and messages is not None:
        raise UsageError(f"{where}: both \"prompt\" and \"messages\": give one")
    if prompt is not None and not (isinstance(prompt, str) and prompt):
        raise UsageError(f"{where}: \"prompt\" must be non-empty text, not {_cut(json.dumps(prompt))}")
    if messages is not None:
        _check_messages(messages, where)
    return PromptEntry(prompt=prompt, messages=messages, output_tokens=_output_tokens(item, where), line=number)


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: \"messages\" must be a non-empty list, not {_cut(json.dumps(messages))}")
    for index, message in enumerate(messages):
        ok = (isinstance(message, dict) and isinstance(message.get("role"), str)
              and isinstance(message.get("content"), (str, list)))
        if not ok:
            raise UsageError(f"{where}: messages[{index}] needs \"role\" (text) and \"content\" (text or parts), "
                             f"not {_cut(json.dumps(message))}")


def _output_tokens(item: dict, where: str) -> int | None:
    for key in ("output_tokens", "max_tokens"):
        value = item.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{where}: \"{key}\" must be a whole number of tokens, at least 1, not "
                             f"{_cut(json.dumps(value))}")
        return value
    return None


def _sharegpt(path: Path) -> list[PromptEntry]:
    data = _json_list(path)
    entries = []
    for index, item in enumerate(data):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue  # as vLLM's ShareGPTDataset: fewer than two turns is no request and answer
        where = f"--prompts {path}, entry {index}"
        prompt, answer = (_turn(turns[i], where, i) for i in (0, 1))
        entries.append(PromptEntry(prompt=prompt, reference=answer, line=index))
    if data and not entries:
        raise UsageError(f"--prompts {path}: none of its {len(data)} entries has \"conversations\" with two turns "
                         f"or more (entry 0: {_cut(json.dumps(data[0]))})",
                         hint="a .json file is read as ShareGPT; name a JSONL file (e.g. prompts.jsonl) for "
                              "{\"prompt\": ...} lines")
    return entries


def _json_list(path: Path) -> list:
    """The whole file (JSON cannot be streamed without a parser bench does not carry)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--prompts {path}: not UTF-8 text (byte {exc.start + 1})",
                         hint="save the file as UTF-8") from None
    if not text.strip():
        raise UsageError(f"--prompts {path}: the file is empty", hint=FORMATS)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--prompts {path}: not JSON ({exc})",
                         hint="a .json file is read as ShareGPT; name a JSONL file otherwise") from None
    if not isinstance(data, list):
        raise UsageError(f"--prompts {path}: a ShareGPT file is a list of conversations, found "
                         f"{type(data).__name__}", hint=FORMATS)
    return data


def _turn(turn: Any, where: str, index: int) -> str:
    value = turn.get("value") if isinstance(turn, dict) else None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: conversations[{index}] needs a non-empty \"value\", not {_cut(json.dumps(turn))}")
    return value


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
