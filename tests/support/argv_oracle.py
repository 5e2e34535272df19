"""The tests' oracle for a finished engine command: a lookup of every flag and value in the
release tables, independent of how the builder (engine/command.py) spelt them. The builder
refuses a bad setting before it spells anything, so the product never needs this second
reading; the tests use it to judge the builder's output release by release."""

from __future__ import annotations

from animllm_cli.engine.vllm_releases import Release, _missing, _value_problem


def check_argv(argv: list[str], release: Release) -> list[str]:
    """Every flag and value form in `argv` (the arguments after `-m module`) that
    `release` does not take, as sentences; [] when it takes them all."""
    problems = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("--"):
            problems.append(f"{word}: a value with no flag before it")
            continue
        name, _, inline = word.partition("=")
        found = release.option(name)
        if found is None:
            problems.append(_missing(name, name, release).message)
            while i < len(argv) and not argv[i].startswith("--"):  # its values, whatever it took
                i += 1
            continue
        name, option = found
        values = [inline] if inline else []
        if not inline and option.takes in ("one", "many", "optional"):
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
                if option.takes != "many":
                    break
        if option.takes == "one" and len(values) != 1 or option.takes == "many" and not values:
            problems.append(f"{name}: vLLM {release.name} wants a value")
        if option.takes == "none" and values:
            problems.append(f"{name}: vLLM {release.name} takes no value")
        problems += [f"{name}: {p}" for text in values if (p := _value_problem(name, text, option, release))]
    return problems
