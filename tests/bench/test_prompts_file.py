"""`bench --prompts FILE` (bench/prompts_file.py): JSONL of prompts or chat messages
(vLLM's custom format), ShareGPT JSON, and a clear refusal, naming file, line and key,
for everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animllm_cli.bench.prompts_file import PromptEntry, has_messages, read_prompts
from animllm_cli.errors import UsageError


def jsonl(tmp_path: Path, *lines: object, name: str = "p.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_prompts_and_messages_with_their_lengths(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    entries = read_prompts(jsonl(tmp_path, {"prompt": "a", "output_tokens": 5}, "", {"messages": messages},
                                 {"prompt": "b", "max_tokens": 2}))
    assert entries == [PromptEntry(prompt="a", output_tokens=5, line=1), PromptEntry(messages=messages, line=3),
                       PromptEntry(prompt="b", output_tokens=2, line=4)]
    assert has_messages(entries) and not has_messages(entries[:1])


def test_sharegpt_takes_the_first_two_turns(tmp_path: Path) -> None:
    path = tmp_path / "share.json"
    path.write_text(json.dumps([
        {"id": "x", "conversations": [{"from": "human", "value": "why?"}, {"from": "gpt", "value": "because"},
                                      {"from": "human", "value": "ok"}]},
        {"id": "short", "conversations": [{"from": "human", "value": "alone"}]},   # skipped, as vLLM does
        {"id": "y", "conversations": [{"from": "human", "value": "how?"}, {"from": "gpt", "value": "so"}]}]))
    assert read_prompts(path) == [PromptEntry(prompt="why?", reference="because", line=0),
                                  PromptEntry(prompt="how?", reference="so", line=2)]


@pytest.mark.parametrize("lines, words", [
    (["{not json"], "line 1: not JSON"),
    ([[1, 2]], "line 1: expected an object"),
    ([{"text": "x"}], "neither \"prompt\" nor \"messages\""),
    ([{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}], "both"),
    ([{"prompt": ""}], "\"prompt\" must be non-empty text"),
    ([{"prompt": "ok"}, {"messages": []}], "line 2: \"messages\" must be a non-empty list"),
    ([{"messages": [{"content": "no role"}]}], "messages[0] needs \"role\""),
    ([{"prompt": "x", "output_tokens": 0}], "\"output_tokens\" must be a whole number"),
    ([{"prompt": "x", "max_tokens": "64"}], "\"max_tokens\" must be a whole number"),
    ([""], "no prompts in it"),
])
def test_jsonl_refusals_name_the_line_and_key(tmp_path: Path, lines: list, words: str) -> None:
    path = jsonl(tmp_path, *lines)
    with pytest.raises(UsageError) as refused:
        read_prompts(path)
    assert words in str(refused.value) and str(path) in str(refused.value)


@pytest.mark.parametrize("content, words", [
    ("{bad", "not JSON"), (json.dumps({"conversations": []}), "a list of conversations"),
    (json.dumps([{"conversations": [{"value": "a"}, {"from": "gpt"}]}]), "entry 0: conversations[1]"),
    (json.dumps([{"conversations": [{"value": "only one"}]}]), "none of its 1 entries has \"conversations\""),
    (json.dumps([{"prompt": "a JSONL line's shape"}]), "none of its 1 entries"),
    (json.dumps([]), "no prompts in it"), ("  \n", "the file is empty"),
])
def test_sharegpt_refusals(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "share.json"
    path.write_text(content)
    with pytest.raises(UsageError) as refused:
        read_prompts(path)
    assert words in str(refused.value)


def test_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read it") as refused:
        read_prompts(tmp_path / "nope.jsonl")
    assert refused.value.hint == "check the path and that the file is readable"
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(UsageError, match="line 3: not UTF-8"):
        read_prompts(binary)


def test_a_byte_order_mark_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n')
    assert read_prompts(path) == [PromptEntry(prompt="a", line=1)]
    share = tmp_path / "bom.json"
    share.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"conversations": [{"value": "q"}, {"value": "a"}]}]).encode())
    assert read_prompts(share) == [PromptEntry(prompt="q", reference="a", line=0)]
