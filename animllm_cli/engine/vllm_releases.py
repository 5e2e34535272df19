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
from functools import cache, cached_property
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("vllm_releases.json")
# From 0.9.2 its parser takes any name; vLLM checks it at start against the built-in list
# plus what plugins register, so a name outside the list is a note, not an error.
QUANTIZATION_OPTION = "--quantization"
# Every release's FlexibleArgumentParser (0.9.0 on; read in each release's source) rewrites
# these before argparse sees them, so no table lists them: `--config FILE` (a YAML of
# flags) and dotted keys (`--compilation-config.level 3` into that option's JSON).


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
    """One release's table (or, for a build between two releases, both of theirs)."""
    version: str                      # the release read: the one "first in" counts from
    options: dict[str, Option]
    quantization: frozenset[str]
    env: frozenset[str]
    server_modules: dict[str, dict] = field(default_factory=dict)  # name -> {runnable, deprecated}
    name: str = ""                    # what messages call it: the installed build's version

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.version)

    @cached_property
    def by_dest(self) -> dict[str, list[tuple[str, Option]]]:
        found: dict[str, list[tuple[str, Option]]] = {}
        for flag, option in self.options.items():
            found.setdefault(option.dest, []).append((flag, option))
        return found

    def option(self, name: str) -> tuple[str, Option] | None:
        """The option `name` means to this release's parser: itself; `--config` and a dotted
        key (rewritten before argparse, see the comment at the top); or the one option it is an
        abbreviation of (argparse takes unique prefixes and no release turns that off),
        unless `name` is itself a flag of some release (then this one lacks it)."""
        if name in self.options:
            return name, self.options[name]
        if name == "--config":
            return name, Option("config", "one")
        base, dot, _ = name.partition(".")
        if dot and base in self.options and self.options[base].takes != "none":
            return name, Option(self.options[base].dest, "one")   # the key's value is checked by vLLM
        if tables().knows_option(name):
            return None
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


def _indices(runs: list[list[int]], after: int = -1) -> list[int]:
    """The release indices in these runs, after `after`."""
    return [i for first, last in runs for i in range(max(first, after + 1), last + 1)]


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
        """The table a version is checked against: its own (a `+cu128` build of it too); for
        a pre-release or dev build, the release before it and the one it leads to together
        (it may have what either has); outside the releases read, none."""
        from packaging.version import InvalidVersion, Version

        if not version:
            return Coverage("", None, "no vLLM version known: flags not checked")
        try:
            wanted = Version(version)
        except InvalidVersion:
            return Coverage(version, None, f"vLLM {version} is not a version number: flags not checked")
        releases = [Version(r) for r in self.releases]
        base = Version(wanted.base_version)
        if base < releases[0] or base > releases[-1]:
            side = "older" if base < releases[0] else "newer"
            return Coverage(version, None, f"vLLM {version} is {side} than the releases read ({self.span}): "
                                           f"flags not checked" + (" (a newer animllm reads newer ones)"
                                                                   if side == "newer" else ""))
        before = [r for r, v in zip(self.releases, releases) if v <= wanted]
        if not (wanted.is_prerelease or wanted.is_devrelease):
            release = self.release(before[-1])
            same = release.version == str(wanted.public)
            return Coverage(version, release, f"vLLM {version}" + ("" if same else f", checked as {release.version}"))
        leads_to = next(r for r, v in zip(self.releases, releases) if v >= base)
        parts = [self.release(r) for r in (before[-1:] + [leads_to])]
        merged = Release(leads_to, {k: v for part in parts for k, v in part.options.items()},
                         frozenset().union(*(p.quantization for p in parts)), frozenset().union(*(p.env for p in parts)),
                         {k: v for part in parts for k, v in part.server_modules.items()}, name=version)
        together = " and ".join(p.version for p in parts)
        return Coverage(version, merged, f"vLLM {version}, a build before {leads_to}: checked as {together} together")

    def knows_option(self, option: str) -> bool:
        return option in self._options

    def whence(self, option: str, version: str, accepts=lambda spec: True) -> str:
        """Where `option` (with a spec `accepts` takes) is, seen from `version` that lacks it:
        "first in X" (a later release with the same setting as the last one before), "last in
        Y", or no release at all."""
        index = self.releases.index(version)
        having = sorted((i, Option.from_json(form["spec"])) for form in self._options.get(option, ())
                        if accepts(Option.from_json(form["spec"])) for i in _indices(form["releases"]))
        earlier = [(i, spec) for i, spec in having if i < index]
        later = [i for i, spec in having if i > index and (not earlier or spec.dest == earlier[-1][1].dest)]
        if later:
            return f"first in {self.releases[later[0]]}"
        if earlier:
            return f"last in {self.releases[earlier[-1][0]]}"
        return f"no release from {self.span} has it"

    def first_with_module(self, module: str, after: str) -> str | None:
        start = self.releases.index(after)
        found = [i for form in self._modules.get(module, ()) if form["spec"]["runnable"]
                 for i in _indices(form["releases"], start)]
        return self.releases[min(found)] if found else None

    def knows_module(self, module: str) -> bool:
        return module in self._modules

    def first_with_name(self, kind: str, name: str, after: str) -> str | None:
        found = _indices(self._names[kind].get(name, []), self.releases.index(after))
        return self.releases[found[0]] if found else None


@cache
def tables() -> Tables:
    return Tables(json.loads(TABLE_PATH.read_text()))


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
    values = default_args[1:]
    if option.takes == "none":
        raise FlagProblem(label, f"{label}: {name} takes no value in vLLM {release.name}; write true or false")
    if isinstance(value, dict):
        return [name, _dict_text(value, option)]
    if option.takes in ("one", "optional") and len(values) > 1:
        raise FlagProblem(label, f"{label}: {name} takes one value in vLLM {release.name}, not a list")
    for text in values:
        problem = _value_problem(name, text, option, release)
        if problem:
            raise FlagProblem(label, f"{label}: {problem}")
    return [name, *values]


def _spell_bool(label: str, name: str, value: bool, release: Release) -> list[str]:
    """`x: true` passes the flag the user named, `x: false` its opposite: what that flag
    stores, or not, is looked up, and the release's own spelling of it chosen (0.33 pairs
    `--enable-x` with `--disable-x` and keeps `--no-enable-x` only hidden from help). Where
    the release has no flag for it and the value is already its default, none is needed."""
    found = release.option(name)
    if found is None:
        raise _missing(label, name if value else "--no-" + name[2:], release)
    name, base = found
    if base.takes != "none":            # a flag that takes true/false as its value
        return [name, str(value).lower()]
    stores = base.sets if value else (not base.sets if isinstance(base.sets, bool) else None)
    wanted = name if value else "--no-" + name[2:]
    spellings = [(option.hidden, option.deprecated, flag != wanted, flag) for flag, option in
                 release.by_dest.get(base.dest, ()) if option.takes == "none" and option.sets is stores]
    if stores is not None and spellings:
        return [min(spellings)[3]]
    if stores is not None and base.default is stores:
        return []
    raise FlagProblem(label, f"{label}: {str(value).lower()} needs {wanted}, which vLLM {release.name} does not "
                             f"have ({tables().whence(wanted, release.version)}); its default there is "
                             f"{json.dumps(base.default)}")


def _dict_text(value: dict, option: Option) -> str:
    if option.forms and "json" not in option.forms and "kv" in option.forms:
        return ",".join(f"{k}={v}" for k, v in value.items())
    return json.dumps(value, separators=(",", ":"))


def _value_problem(name: str, text: str, option: Option, release: Release) -> str | None:
    """What is wrong with `name text` for this release: a choice its parser does not list,
    or a dict written in a form it does not parse; None when it takes it."""
    if option.forms:
        written = "json" if text.lstrip().startswith("{") else "kv" if "=" in text else None
        if written and written not in option.forms:
            other = " or ".join("JSON" if f == "json" else "key=value" for f in option.forms)
            return f"vLLM {release.name} takes {name} as {other} only, not {text!r}"
    if option.choices is not None and text not in option.choices:
        where = tables().whence(name, release.version, lambda spec: spec.choices is not None and text in spec.choices)
        return (f"vLLM {release.name} does not take {name} {text} ({where.replace('has it', 'lists it')}); "
                f"it takes {', '.join(c for c in option.choices if c != 'None')}")
    return None


def _missing(key: str, option: str, release: Release) -> FlagProblem:
    import difflib

    where = tables().whence(option, release.version)
    close = [o for o in difflib.get_close_matches(option, release.options, n=1)
             if o.startswith("--") and not release.options[o].hidden]
    return FlagProblem(key, f"{key}: vLLM {release.name} has no {option} ({where})"
                            + (f"; did you mean {close[0]}?" if close and where.startswith("no release") else ""))


def module_problem(module: str, release: Release | None) -> str | None:
    """A server module the tables know that this release cannot run (`-m`), as a sentence."""
    if release is None or not tables().knows_module(module) or release.server_modules.get(module, {}).get("runnable"):
        return None
    first = tables().first_with_module(module, release.version)
    where = f"first in {first}" if first else f"no release from {tables().span} has it"
    return f"engine.module: vLLM {release.name} cannot run `python -m {module}` ({where})"


def unknown_quantization(argv: list[str], release: Release) -> str | None:
    """A --quantization name outside the release's built-in methods, as a note: a plugin
    may register it (vLLM checks at start); 0.9.0-0.9.1, whose parser lists the methods,
    refuse it in spell() instead."""
    if QUANTIZATION_OPTION not in argv[:-1]:
        return None
    name = argv[argv.index(QUANTIZATION_OPTION) + 1]
    if name in release.quantization:
        return None
    first = tables().first_with_name("quantization", name, release.version)
    return (f"--quantization {name} is not one of vLLM {release.name}'s own methods"
            + (f" (first in {first})" if first else "") + "; unless a plugin registers it, vLLM refuses it at start")


def notes(coverage: Coverage, command_env: list[str], argv: list[str]) -> list[str]:
    """What a user preparing a command for this release should know that is not an error:
    the release is outside the tables, its server module warns that it is deprecated, a
    quantization name is not built in, or a VLLM_* variable the engine gets is one it does
    not read (vLLM warns and ignores it). `argv`: the command, `<python> -m MODULE ...`."""
    release = coverage.release
    if release is None:
        return [coverage.reason]
    found = []
    module = argv[2]
    if release.server_modules.get(module, {}).get("deprecated"):
        instead = [m for m, spec in release.server_modules.items() if spec["runnable"] and not spec["deprecated"]]
        found.append(f"vLLM {release.name} warns that `python -m {module}` is deprecated; it still runs"
                     + (f" (engine.module: {instead[0]} runs the same server without the warning)" if instead else ""))
    quantization = unknown_quantization(argv, release)
    if quantization:
        found.append(quantization)
    unknown = [v for v in command_env if v.startswith("VLLM_") and v not in release.env]
    if unknown:
        found.append(f"vLLM {release.name} does not read {', '.join(unknown)} (it warns and ignores them)")
    return found
