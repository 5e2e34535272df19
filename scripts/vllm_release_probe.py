"""Run by scripts/read_vllm_releases.py in a subprocess, once per release: builds that
release's own server argument parser from its source tree (the first argument) and
prints, as JSON, every option it accepts, the quantization methods, the environment
variables and which server modules it can run (and whether they warn they are deprecated).

The source tree is imported over whatever vLLM the interpreter has installed: its torch
and transformers are newer or older than the release expects, so three things are
shimmed that do not change the parser: transformers' refusal of a config name it now
ships itself; the platform (found from the installed build's metadata, which names
another release): the CPU platform, which builds the parser without a device; and a
third-party package the release imports that is not installed (a kernel library, a
cache): an empty stand-in, named in the output's `stubbed`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import io
import json
import os
import re
import sys
import types
from pathlib import Path

DICT_PROBES = {"json": '{"image":4}', "kv": "image=4"}  # how a dict-valued flag may be written
SERVER_MODULES = ("vllm.entrypoints.openai.api_server",            # every release read
                  "vllm.entrypoints.launchers.api_server.entry")   # 0.29+: what the first runs, minus its warning
MISSING_EXIT = 3  # a third-party package is missing: run again standing in for it (the JSON line names it)


def shim_transformers() -> None:
    try:
        from transformers.models.auto import configuration_auto
    except ImportError:
        return
    mapping = configuration_auto._LazyConfigMapping
    register = mapping.register
    mapping.register = lambda self, key, value, exist_ok=False: register(self, key, value, exist_ok=True)


def use_cpu_platform() -> None:
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()


class _StubType(type):
    """A class that has every attribute (another such class), can be subclassed, called
    and subscripted: enough for module-level uses of a package that is not there."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name, (_Stub,), {})

    def __getitem__(cls, item):
        return cls


class _Stub(metaclass=_StubType):
    def __init__(self, *args, **kwargs):
        pass


class _StubModule(types.ModuleType):
    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name, (_Stub,), {})


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stands in for the packages named in `names` (and their submodules), last on the path.
    Usage: vllm_release_probe.py TREE [pkg1,pkg2,...]"""

    def __init__(self):
        self.names: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def parser_module():
    # Where make_arg_parser lives moved twice (openai -> launchers in 0.2x -> common).
    for name in ("vllm.entrypoints.common.cli_args", "vllm.entrypoints.launchers.cli_args",
                 "vllm.entrypoints.openai.cli_args"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):  # a dependency, not the path tried
                raise
    raise ModuleNotFoundError("no make_arg_parser in vllm.entrypoints.{common,launchers,openai}.cli_args")


def make_parser():
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser
    return parser_module().make_arg_parser(FlexibleArgumentParser())


def parses(parser, *words: str):
    """What the parser makes of these words after `--model m`, or None when it refuses them."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return vars(parser.parse_args(["--model", "m", *words]))
        except (SystemExit, Exception):  # a custom action may raise its own error
            return None


def takes(action) -> str:
    if action.nargs == 0:
        return "none"
    if action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1):
        return "many"
    return "optional" if action.nargs == "?" else "one"


def sets(parser, action, option: str):
    """The value a flag that takes none stores, as the parser stores it (vLLM's own actions
    pair --enable-x with --disable-x, and keep --no-enable-x registered but out of help)."""
    parsed = parses(parser, option)
    value = parsed.get(action.dest) if parsed is not None else None
    return value if isinstance(value, (bool, int, float, str)) else None


def options(parser) -> dict[str, dict]:
    """Every option string the parser accepts: its registered ones, help-hidden included."""
    found = {}
    forms_of: dict[int, list[str]] = {}
    for option, action in sorted(parser._option_string_actions.items()):
        if isinstance(action, argparse._HelpAction):
            continue
        if id(action) not in forms_of:
            forms_of[id(action)] = [form for form, text in DICT_PROBES.items() if takes(action) != "none"
                                    and isinstance((parses(parser, option, text) or {}).get(action.dest), dict)]
        entry = {"dest": action.dest, "takes": takes(action)}
        if action.nargs == 0:  # what false means without a --no- form; other defaults would only churn the table
            entry["sets"] = sets(parser, action, option)
            entry["default"] = action.default if isinstance(action.default, (bool, int, float, str)) else None
        if action.choices is not None:
            entry["choices"] = sorted(str(c) for c in action.choices if c is not None)
        if forms_of[id(action)]:
            entry["forms"] = forms_of[id(action)]
        if option not in action.option_strings:     # accepted, but left out of --help
            entry["hidden"] = True
        if action in getattr(parser, "_deprecated", ()) or getattr(action, "deprecated", False):
            entry["deprecated"] = True              # accepted with a warning
        found[option] = entry
    return found


def quantization_methods() -> list[str]:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return sorted(QUANTIZATION_METHODS)


def environment_variables() -> list[str]:
    import vllm.envs

    return sorted(vllm.envs.environment_variables)


def server_modules(tree: Path) -> dict:
    """Which of the server modules `python -m` can run in this release, and whether it warns
    that it is deprecated."""
    found = {}
    for name in SERVER_MODULES:
        path = tree / (name.replace(".", "/") + ".py")
        if path.is_file():
            text = path.read_text()
            warns = re.search(re.escape(name) + r"`? (command )?is deprecated", text)
            found[name] = {"runnable": "__main__" in text, "deprecated": bool(warns)}
    return found


def main() -> None:
    tree = Path(sys.argv[1]).resolve()
    stubs = StubFinder()
    stubs.names.update(filter(None, (sys.argv[2] if len(sys.argv) > 2 else "").split(",")))
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    shim_transformers()
    use_cpu_platform()
    sys.meta_path.append(stubs)
    with contextlib.redirect_stdout(sys.stderr):  # vLLM logs to stdout at import
        try:
            parser = make_parser()
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if not top or top == "vllm" or top in stubs.names:
                raise
            # Torch ops cannot be registered twice in one process: the caller runs again with it stubbed.
            print(json.dumps({"missing": top}), file=sys.__stdout__)
            sys.exit(MISSING_EXIT)
        table = {"options": options(parser), "quantization": quantization_methods(),
                 "env": environment_variables(), "server_modules": server_modules(tree),
                 "stubbed": sorted(stubs.names)}
    print(json.dumps(table, sort_keys=True))


if __name__ == "__main__":
    main()
