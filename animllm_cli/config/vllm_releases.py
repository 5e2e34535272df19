"""What each vLLM release from 0.9.0 on accepts on its server's command line: the table
in vllm_releases.json, read from every release's own source by
scripts/read_vllm_releases.py (never edited by hand).

The engine command builder spells each setting as the engine's release takes it, and
refuses, before a 30-second start, a flag, value or form that release does not have,
naming the first release that has it. A version outside the tables (older than the
first release read, newer than the last) is not checked: refusing a flag that a newer
vLLM has would be worse than letting vLLM judge it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("vllm_releases.json")
QUANTIZATION_OPTION = "--quantization"  # its parser takes any name; vLLM checks it against this list at start


@dataclass(frozen=True)
class Option:
    """One option string of one release's parser."""
    dest: str
    takes: str                        # none | one | optional | many
    default: Any = None
    sets: Any = None                  # what a flag that takes no value stores
    choices: tuple[str, ...] | None = None
    forms: tuple[str, ...] = ()       # how a dict value may be written: json, kv
    hidden: bool = False              # accepted, but not in --help (an old spelling kept working)
    deprecated: bool = False          # accepted with a warning

    @classmethod
    def from_json(cls, spec: dict) -> "Option":
        choices = spec.get("choices")
        return cls(spec["dest"], spec["takes"], spec.get("default"), spec.get("sets"),
                   tuple(choices) if choices is not None else None, tuple(spec.get("forms", ())),
                   spec.get("hidden", False), spec.get("deprecated", False))


@dataclass(frozen=True)
class Release:
    """One release's table."""
    version: str
    options: dict[str, Option]
    quantization: frozenset[str]
    env: frozenset[str]
    server_modules: dict[str, dict] = field(default_factory=dict)  # name -> {runnable, deprecated}

    def option(self, name: str) -> tuple[str, Option] | None:
        """The option `name` means to this release's parser: itself, or the one option it is
        a prefix of (argparse takes unique abbreviations, and no release turns that off)."""
        if name in self.options:
            return name, self.options[name]
        matches = [o for o in self.options if o.startswith(name)]
        return (matches[0], self.options[matches[0]]) if len(matches) == 1 else None


@dataclass(frozen=True)
class Coverage:
    """Which table a version is checked against, or why it is not."""
    version: str
    release: Release | None
    reason: str           # one line for the doctor and `config show`

    @property
    def checked(self) -> bool:
        return self.release is not None


class FlagProblem(ValueError):
    """A setting the engine's release does not take, as a sentence that names the setting,
    the release and the first release that takes it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


def _in(runs: list[list[int]], index: int) -> bool:
    return any(first <= index <= last for first, last in runs)


def _first(runs: list[list[int]], after: int) -> int | None:
    """The first release index after `after` in these runs."""
    return next((max(first, after + 1) for first, last in runs if last > after), None)


class Tables:
    """The whole file: every release read, each fact with the runs of releases that have it."""

    def __init__(self, data: dict) -> None:
        self.releases: list[str] = data["releases"]
        self._options: dict[str, list[dict]] = data["options"]
        self._names = {"quantization": data["quantization"], "env": data["env"]}
        self._modules: dict[str, list[dict]] = data["server_modules"]
        self._built: dict[str, Release] = {}

    @property
    def span(self) -> str:
        return f"{self.releases[0]} to {self.releases[-1]}"

    def release(self, version: str) -> Release:
        if version not in self._built:
            self._built[version] = self._build(version)
        return self._built[version]

    def _build(self, version: str) -> Release:
        index = self.releases.index(version)
        options = {name: Option.from_json(form["spec"]) for name, forms in self._options.items()
                   for form in forms if _in(form["releases"], index)}
        names = {kind: frozenset(n for n, runs in table.items() if _in(runs, index))
                 for kind, table in self._names.items()}
        modules = {name: form["spec"] for name, forms in self._modules.items() for form in forms
                   if _in(form["releases"], index)}
        return Release(version, options, names["quantization"], names["env"], modules)

    def coverage(self, version: str | None) -> Coverage:
        """The table a version is checked against: its own, or for a build between two
        releases read (a dev build, a patch not on the index) the newest before it."""
        from packaging.version import InvalidVersion, Version

        if not version:
            return Coverage("", None, "no vLLM version known: flags not checked")
        try:
            wanted = Version(version)
        except InvalidVersion:
            return Coverage(version, None, f"vLLM {version} is not a version number: flags not checked")
        base = Version(wanted.base_version)
        releases = [Version(r) for r in self.releases]
        if base < releases[0] or base > releases[-1]:
            side = "older" if base < releases[0] else "newer"
            return Coverage(version, None, f"vLLM {version} is {side} than the releases read ({self.span}): "
                                           f"flags not checked (scripts/read_vllm_releases.py reads newer ones)")
        index = max(i for i, r in enumerate(releases) if r <= wanted)
        release = self.release(self.releases[index])
        same = release.version == str(wanted.public)
        return Coverage(version, release, f"vLLM {version}" + ("" if same else f", checked as {release.version}"))

    def first_with_option(self, option: str, after: str, accepts=lambda spec: True) -> str | None:
        """The first release after `after` whose `option` exists and `accepts` its spec."""
        start = self.releases.index(after)
        firsts = [_first(form["releases"], start) for form in self._options.get(option, ())
                  if accepts(Option.from_json(form["spec"]))]
        found = [i for i in firsts if i is not None]
        return self.releases[min(found)] if found else None

    def first_with_module(self, module: str, after: str) -> str | None:
        start = self.releases.index(after)
        found = [i for form in self._modules.get(module, ()) if form["spec"]["runnable"]
                 if (i := _first(form["releases"], start)) is not None]
        return self.releases[min(found)] if found else None

    def knows_module(self, module: str) -> bool:
        return module in self._modules

    def first_with_name(self, kind: str, name: str, after: str) -> str | None:
        index = _first(self._names[kind].get(name, []), self.releases.index(after))
        return self.releases[index] if index is not None else None


@cache
def tables() -> Tables:
    return Tables(json.loads(TABLE_PATH.read_text()))


def _later(first: str | None, what: str) -> str:
    return f"first in {first}" if first else f"no release from {tables().span} has {what}"


def spell(key: str, value: Any, release: Release | None, default_args: list[str], label: str | None = None) -> list[str]:
    """Setting `key: value` as `release` spells it (`default_args`: the spelling without a
    table). Raises FlagProblem, naming `label` (default: key), for what the release does
    not take."""
    if release is None or not default_args:
        return default_args
    label = label or key
    name = "--" + key.lstrip("-").replace("_", "-")
    if isinstance(value, bool):
        return _spell_bool(label, name, value, release)
    found = release.option(name)
    if found is None:
        raise _missing(label, name, release)
    name, option = found
    if option.takes == "none":
        raise FlagProblem(label, f"{label}: {name} takes no value in vLLM {release.version}; write true or false")
    if isinstance(value, dict):
        return [name, _dict_text(value, option)]
    values = default_args[1:]
    for text in values:
        _check_value(label, name, text, option, release)
    return [name, *values]


def _spell_bool(label: str, name: str, value: bool, release: Release) -> list[str]:
    """`--x` / `--no-x` as the release spells them: 0.33 pairs `--enable-x` with
    `--disable-x` and keeps `--no-enable-x` only as a hidden alias, so the visible flag of
    the same setting that stores `value` is chosen; a release with neither, where `value`
    is already the default, needs no flag."""
    found = release.option(name)
    if found is None:
        found = release.option("--no-" + name[2:])
        if found is None:
            raise _missing(label, name if value else "--no-" + name[2:], release)
        found = ("--" + found[0][5:], found[1])
    name, base = found
    wanted = name if value else "--no-" + name[2:]
    if base.takes != "none":            # a flag that takes true/false as its value
        return [name, str(value).lower()]
    spellings = [(option.hidden, option.deprecated, flag != wanted, flag) for flag, option in release.options.items()
                 if option.dest == base.dest and option.takes == "none" and option.sets is value]
    if spellings:
        return [min(spellings)[3]]
    if base.default is value:           # already the release's default: nothing to say
        return []
    first = tables().first_with_option(wanted, release.version)
    raise FlagProblem(label, f"{label}: {str(value).lower()} needs {wanted}, which vLLM {release.version} does not "
                             f"have ({_later(first, wanted)}); its default there is {json.dumps(base.default)}")


def _dict_text(value: dict, option: Option) -> str:
    if option.forms and "json" not in option.forms and "kv" in option.forms:
        return ",".join(f"{k}={v}" for k, v in value.items())
    return json.dumps(value, separators=(",", ":"))


def _check_value(key: str, name: str, text: str, option: Option, release: Release) -> None:
    if name == QUANTIZATION_OPTION:
        allowed, first = release.quantization, tables().first_with_name("quantization", text, release.version)
    elif option.choices is not None:
        allowed = set(option.choices)
        first = tables().first_with_option(name, release.version,
                                           lambda spec: spec.choices is None or text in spec.choices)
    else:
        return
    if text not in allowed:
        raise FlagProblem(key, f"{key}: vLLM {release.version} does not take {name} {text} "
                               f"({_later(first, f'{name} {text}')}); it takes "
                               f"{', '.join(sorted(allowed))}")


def _missing(key: str, option: str, release: Release) -> FlagProblem:
    import difflib

    first = tables().first_with_option(option, release.version)
    close = [o for o in difflib.get_close_matches(option, release.options, n=1) if not release.options[o].hidden]
    return FlagProblem(key, f"{key}: vLLM {release.version} has no {option} ({_later(first, option)})"
                            + (f"; did you mean {close[0]}?" if close and not first else ""))


def check_argv(argv: list[str], release: Release) -> list[str]:
    """Every flag and value form in `argv` (the arguments after `-m module`) that
    `release` does not take, as sentences; [] when it takes them all. A table lookup:
    what the doctor and the tests use to judge a finished command."""
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
            problems.append(str(_missing(name, name, release)))
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
            problems.append(f"{name}: vLLM {release.version} wants a value")
        if option.takes == "none" and values:
            problems.append(f"{name}: vLLM {release.version} takes no value")
        for text in values:
            problems += _value_problems(name, text, option, release)
    return problems


def _value_problems(name: str, text: str, option: Option, release: Release) -> list[str]:
    if text.startswith("{") and option.forms and "json" not in option.forms:
        return [f"{name}: vLLM {release.version} does not take JSON here ({' or '.join(option.forms)} only)"]
    try:
        _check_value(name, name, text, option, release)
    except FlagProblem as problem:
        return [problem.message]
    return []


def module_problem(module: str, release: Release | None) -> str | None:
    """A server module the tables know that this release cannot run (`-m`), as a sentence."""
    if release is None or not tables().knows_module(module) or release.server_modules.get(module, {}).get("runnable"):
        return None
    first = tables().first_with_module(module, release.version)
    return f"engine.module: vLLM {release.version} cannot run `python -m {module}` ({_later(first, module)})"


def notes(coverage: Coverage, env_names: list[str], module: str) -> list[str]:
    """What a user preparing a command for this release should know that is not an error:
    the release is outside the tables, its server module warns that it is deprecated, or
    a VLLM_* variable set for the engine is one it does not read (vLLM warns, ignores it)."""
    release = coverage.release
    if release is None:
        return [coverage.reason]
    found = []
    if release.server_modules.get(module, {}).get("deprecated"):
        instead = [m for m, spec in release.server_modules.items() if spec["runnable"] and not spec["deprecated"]]
        found.append(f"vLLM {release.version} warns that `python -m {module}` is deprecated; it still runs"
                     + (f" (engine.module: {instead[0]} runs the same server without the warning)" if instead else ""))
    unknown = [v for v in env_names if v.startswith("VLLM_") and v not in release.env]
    if unknown:
        found.append(f"vLLM {release.version} does not read {', '.join(unknown)} (it warns and ignores them)")
    return found
