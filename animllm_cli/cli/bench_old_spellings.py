"""`animllm bench`'s spellings from before `bench-mix`, `bench-compare` and `--save`, kept
for one release (docs/benchmarks.md): the group turns them into today's before bench parses
its arguments, with a warning each. Next release: delete this module and its hook in
cli/__init__.py."""

from __future__ import annotations

from animllm_cli.errors import UsageError

RELEASE_NOTE = "the old spelling goes in the next release"


def old_spellings(args: list[str]) -> tuple[str, list[str], list[str]]:
    """What followed `animllm bench` as (command, its arguments, warnings): `--mix SPEC` is
    `bench-mix SPEC`, `--compare A B` is `bench-compare A B`, `--json -` is `--json` and
    `--json FILE.json` is `--save FILE.json`. Another word after `--json` is refused: it
    may be a file or a model. So is `-c`, which is the root's `--config` alone now."""
    command, kept, notes, words = "bench", [], [], list(args)
    while words:
        word = words.pop(0)
        option, equals, value = word.partition("=")
        if word == "--":
            kept += [word, *words]
            break
        if word.startswith("-c"):
            raise UsageError(f"bench {word}: -c is --config now, and only before the command",
                             hint="concurrency levels are --concurrency, e.g. animllm bench --concurrency 1,4,8")
        if option == "--json":
            if not equals:  # the old option's value, if a word that is not an option follows
                value = words.pop(0) if words and (words[0] == "-" or not words[0].startswith("-")) else None
            kept += _old_json(value, notes, spelt_with_equals=bool(equals))
        elif option == "--mix" and (equals or words):
            command, kept = "bench-mix", [value if equals else words.pop(0), *kept]
            notes.append(f"`bench --mix MODELS` is `bench-mix MODELS` now; {RELEASE_NOTE}")
        elif option == "--compare" and len(words) >= (1 if equals else 2):
            files = [value if equals else words.pop(0), words.pop(0)]
            command, kept = "bench-compare", [*files, *kept]
            notes.append(f"`bench --compare A B` is `bench-compare A B` now; {RELEASE_NOTE}")
        else:
            kept.append(word)
    return command, kept, notes


def _old_json(value: str | None, notes: list[str], *, spelt_with_equals: bool) -> list[str]:
    """`--json` alone, or with the value the old option took (None: none followed)."""
    if value is None:
        return ["--json"]
    if value == "-":
        notes.append(f"`--json -` is `--json` now (JSON on stdout); {RELEASE_NOTE}")
        return ["--json"]
    if value.lower().endswith(".json") or spelt_with_equals:
        notes.append(f"`--json {value}` is `--save {value}` now (--json alone: JSON on stdout); {RELEASE_NOTE}")
        return ["--save", value]
    raise UsageError(f"bench --json {value}: --json prints the JSON on stdout and takes no value now",
                     hint=f"to write a file: --save {value}; to measure the model '{value}': "
                          f"animllm bench {value} --json")
