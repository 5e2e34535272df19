"""The engine command against every vLLM release in the tables (engine/vllm_releases.json,
read from each release's own source): what each release accepts, the spelling the builder
picks for it, and the exit-2 refusal of what a release does not have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animllm_cli.config import load_config
from animllm_cli.engine.command import build_engine_command
from animllm_cli.engine.vllm_releases import tables
from tests.support.argv_oracle import check_argv
from animllm_cli.errors import ConfigError
from tests.support.helpers import EXAMPLE_CONFIGS, SHIPPED_CONFIG, run_cli, write

RELEASES = tables().releases
FIRST, LAST = RELEASES[0], RELEASES[-1]
SLEEP_FLAG = "--enable-sleep-mode"  # engine/supervisor.launch appends it for a model that may sleep


def _command(config: Path | None, model: str, version: str):
    loaded = load_config(config)
    return build_engine_command(loaded, loaded.model(model), vllm_version=version, api_key="engine-key")


def _later_only(takes: str) -> tuple[str, str]:
    """An option the first release lacks and the last has (taking `takes`), and the first release with it."""
    first, last = tables().release(FIRST), tables().release(LAST)
    for option in sorted(set(last.options) - set(first.options)):
        spec = last.options[option]
        if spec.takes == takes and not spec.hidden and option.startswith("--") and not option.startswith("--no-"):
            return option, tables().whence(option, FIRST).removeprefix("first in ")
    raise AssertionError(f"no option taking {takes} was added between {FIRST} and {LAST}")


def test_the_tables_cover_every_release_from_0_9_in_order() -> None:
    from packaging.version import Version

    assert FIRST == "0.9.0" and len(RELEASES) >= 40
    assert [Version(r) for r in RELEASES] == sorted(Version(r) for r in RELEASES)
    assert {"0.9.2", "0.10.0", "0.10.1.1", "0.32.0"} <= set(RELEASES)


@pytest.mark.parametrize("release", RELEASES)
def test_every_release_takes_the_shipped_and_example_commands(release: str) -> None:
    """For each release: each local model of the shipped config and the examples, spelt for
    that release, uses only flags and value forms that release accepts (a table lookup)."""
    table = tables().release(release)
    checked = 0
    for config in [SHIPPED_CONFIG, *EXAMPLE_CONFIGS]:
        loaded = load_config(config)
        for name in loaded.local_model_names():
            command = build_engine_command(loaded, loaded.model(name), vllm_version=release, api_key="k")
            assert command.vllm.release.version == release
            assert check_argv([*command.argv[3:], SLEEP_FLAG], table) == [], (config.name, name)
            checked += 1
    assert checked >= 12
    assert table.server_modules["vllm.entrypoints.openai.api_server"]["runnable"], table.server_modules


def test_check_argv_can_fail_a_later_flag_and_a_later_choice() -> None:
    """The negative controls: the lookup refuses what the release lacks, naming the first release with it."""
    option, first_with = _later_only("none")
    assert check_argv(["--model", "m", option], tables().release(FIRST)) == \
        [f"{option}: vLLM {FIRST} has no {option} (first in {first_with})"]
    assert check_argv(["--model", "m", option], tables().release(first_with)) == []
    problems = check_argv(["--model", "m", "--dtype", "float7", "--no-such-flag"], tables().release(LAST))
    assert any("--dtype float7" in p for p in problems) and any("--no-such-flag" in p for p in problems)
    assert check_argv(["--limit-mm-per-prompt"], tables().release(LAST)) == \
        [f"--limit-mm-per-prompt: vLLM {LAST} wants a value"]


def test_a_setting_a_release_lacks_is_an_exit_2_error_naming_setting_version_and_first_release(tmp_path) -> None:
    option, first_with = _later_only("none")
    key = option[2:]
    config = write(tmp_path / "c.yaml", f"models:\n  coder:\n    extra_args: {{{key}: true}}\n")
    with pytest.raises(ConfigError) as caught:
        _command(config, "coder", FIRST)
    assert caught.value.exit_code == 2
    [problem] = caught.value.problems
    assert problem.startswith(f"models.coder.extra_args.{key}: vLLM {FIRST} has no {option} (first in {first_with})")
    assert str(config) in problem                      # where the setting came from
    assert option in _command(config, "coder", first_with).argv


def test_a_choice_a_release_lacks_names_the_first_release_with_it(tmp_path) -> None:
    first = tables().release(FIRST)
    # 0.33 checks the dtype after parsing (no choices): the last release whose parser lists them.
    last = next(tables().release(r) for r in reversed(RELEASES)
                if tables().release(r).options["--kv-cache-dtype"].choices is not None)
    newer = sorted(set(last.options["--kv-cache-dtype"].choices) - set(first.options["--kv-cache-dtype"].choices))
    assert "fp8_inc" in newer, "kv-cache dtypes were added after 0.9.0"
    config = write(tmp_path / "c.yaml", "models:\n  coder:\n    kv_cache_dtype: fp8_inc\n")
    with pytest.raises(ConfigError) as caught:
        _command(config, "coder", FIRST)
    assert f"kv_cache_dtype: vLLM {FIRST} does not take --kv-cache-dtype fp8_inc (first in 0.10.0)" \
        in caught.value.problems[0]
    assert "--kv-cache-dtype" in _command(config, "coder", last.version).argv


def test_a_quantization_method_outside_the_list_is_refused_where_the_parser_lists_them(tmp_path) -> None:
    """0.9.0-0.9.1's parsers list the methods; later ones take any name and check it at start,
    where a plugin may have registered it: there it is a note."""
    config = write(tmp_path / "c.yaml", "models:\n  coder:\n    quantization: awq_turbo\n")
    with pytest.raises(ConfigError) as caught:
        _command(config, "coder", FIRST)
    assert f"vLLM {FIRST} does not take --quantization awq_turbo (no release from {FIRST} to {LAST} lists it)" \
        in caught.value.problems[0]
    result = run_cli("config", "show", "coder", "--format", "args", "--vllm-version", "0.10.0", "--config", str(config))
    assert result.exit_code == 0 and "--quantization awq_turbo" in result.stdout
    assert "--quantization awq_turbo is not one of vLLM 0.10.0's own methods; unless a plugin registers it" \
        in result.stderr


@pytest.mark.parametrize("release", RELEASES)
def test_true_and_false_store_what_was_meant_in_every_release(release: str) -> None:
    """`x: true` passes the flag named, `x: false` its opposite, whatever the release spells
    them: --disable-log-requests: true must never become --enable-log-requests."""
    from animllm_cli.engine.command import flag_args
    from animllm_cli.engine.vllm_releases import spell

    table = tables().release(release)
    checked = 0
    for flag, option in table.options.items():
        if not flag.startswith("--") or option.takes != "none" or not isinstance(option.sets, bool):
            continue
        for value in (True, False):
            meant = option.sets if value else not option.sets
            try:
                spelt = spell(flag[2:], value, table, flag_args(flag[2:], value))
            except ConfigError:
                continue
            except Exception as problem:  # FlagProblem: the release cannot say it; never the opposite
                assert "needs" in str(problem), (flag, value, problem)
                continue
            if spelt:
                chosen = table.options[spelt[0]]
                assert (chosen.dest, chosen.sets) == (option.dest, meant), (flag, value, spelt)
            else:
                assert option.default is meant, (flag, value)
            checked += 1
    assert checked > 100


def test_false_is_spelt_as_each_release_spells_it(tmp_path) -> None:
    """0.32 has --no-enable-prefix-caching; 0.33 pairs --enable-x with --disable-x and keeps the
    --no- form only hidden from help: the visible spelling is chosen."""
    config = write(tmp_path / "c.yaml", "models:\n  coder:\n    enable_prefix_caching: false\n"
                                        "    enable_chunked_prefill: false\n")
    old = _command(config, "coder", "0.32.0").argv
    assert "--no-enable-prefix-caching" in old and "--no-enable-chunked-prefill" in old
    if "0.33.0" in RELEASES:
        new = _command(config, "coder", "0.33.0").argv
        assert "--disable-prefix-caching" in new and "--disable-chunked-prefill" in new
        assert "--no-enable-prefix-caching" not in new


def test_the_server_module_each_release_can_run_and_its_deprecation(tmp_path) -> None:
    """0.29 moved the server to vllm.entrypoints.launchers.api_server.entry; the old module
    still runs it, with a deprecation warning."""
    entry = "vllm.entrypoints.launchers.api_server.entry"
    first_with = tables().first_with_module(entry, FIRST)
    assert first_with == "0.29.0"
    config = write(tmp_path / "c.yaml", f"engine: {{module: {entry}}}\n")
    with pytest.raises(ConfigError) as caught:
        _command(config, "coder", "0.28.0")
    assert caught.value.problems == [f"engine.module: vLLM 0.28.0 cannot run `python -m {entry}` (first in 0.29.0)"]
    assert _command(config, "coder", first_with).module == entry
    result = run_cli("config", "show", "coder", "--format", "args", "--vllm-version", first_with)
    assert "`python -m vllm.entrypoints.openai.api_server` is deprecated; it still runs (engine.module: " \
           f"{entry} runs the same server without the warning)" in result.stderr
    assert "deprecated" not in run_cli("config", "show", "coder", "--format", "args", "--vllm-version", "0.28.0").stderr


def test_versions_between_and_outside_the_tables() -> None:
    coverage = tables().coverage
    assert coverage("0.10.1+cu128").release.version == "0.10.1"           # a local build of a release
    assert coverage("0.10.1.post1").release.version == "0.10.1"
    # A dev build or release candidate of 0.10.2 may have what 0.10.1.1 or 0.10.2 has.
    dev = coverage("0.10.2.dev57+g1234abc")
    assert dev.release.name == "0.10.2.dev57+g1234abc" and "0.10.1.1 and 0.10.2 together" in dev.reason
    assert "--kv-cache-memory-bytes" in dev.release.options and "--kv-cache-memory-bytes" not in \
        tables().release("0.10.1.1").options
    assert coverage("0.9.0rc1").release.options == tables().release(FIRST).options  # no release before it
    for outside in ("0.8.5", "99.0.0"):
        assert not coverage(outside).checked and "flags not checked" in coverage(outside).reason
    assert not coverage("banana").checked and not coverage(None).checked


def test_what_vllm_rewrites_before_argparse_and_abbreviations(tmp_path) -> None:
    """Every release's parser takes `--config FILE` and dotted keys (rewritten before
    argparse, so in no table) and a unique abbreviation; a flag some other release has is
    not read as an abbreviation of another (0.27's --device-ids is not --device)."""
    for release in (FIRST, "0.27.0", LAST):
        table = tables().release(release)
        assert check_argv(["--config", "/x/v.yaml", "--compilation-config.level", "3", "--max-num-seq", "3"],
                          table) == [], release
    config = write(tmp_path / "c.yaml", "models:\n  coder:\n    extra_args: {compilation-config.cudagraph_mode: NONE,"
                                        " device: cuda}\n")
    with pytest.raises(ConfigError) as caught:
        _command(config, "coder", "0.27.0")
    assert caught.value.problems[0].startswith("models.coder.extra_args.device: vLLM 0.27.0 has no --device (last in ")
    assert "compilation-config" not in " ".join(caught.value.problems)


def test_removed_flags_and_dict_forms_are_named_as_they_are() -> None:
    problems = check_argv(["--num-scheduler-steps", "4"], tables().release("0.20.0"))
    assert len(problems) == 1 and "has no --num-scheduler-steps (last in 0." in problems[0], problems
    # 0.9.x took key=value or JSON; 0.10.0 on JSON only.
    assert check_argv(["--limit-mm-per-prompt", "image=4"], tables().release("0.9.2")) == []
    assert check_argv(["--limit-mm-per-prompt", "image=4"], tables().release("0.10.0")) == \
        ["--limit-mm-per-prompt: vLLM 0.10.0 takes --limit-mm-per-prompt as JSON only, not 'image=4'"]


def test_outside_the_tables_the_command_is_built_unchecked(tmp_path) -> None:
    config = write(tmp_path / "c.yaml", "models:\n  coder:\n    extra_args: {no-such-flag: true}\n")
    assert "--no-such-flag" in _command(config, "coder", "99.0.0").argv     # vLLM judges it at start


def test_config_show_args_for_another_release(tmp_path) -> None:
    result = run_cli("config", "show", "vision", "--format", "args", "--vllm-version", FIRST)
    assert result.exit_code == 0, result.output
    assert "--limit-mm-per-prompt" in result.stdout and "--quantization awq_marlin" in result.stdout
    option, first_with = _later_only("none")
    config = write(tmp_path / "c.yaml", f"models:\n  coder:\n    extra_args: {{{option[2:]}: true}}\n")
    refused = run_cli("config", "show", "coder", "--format", "args", "--vllm-version", FIRST, "--config", str(config))
    assert refused.exit_code == 2
    assert f"vLLM {FIRST} has no {option} (first in {first_with})" in refused.stderr
    assert option in run_cli("config", "show", "coder", "--format", "args", "--vllm-version", first_with,
                             "--config", str(config)).stdout


def test_config_show_json_names_the_release_and_its_notes() -> None:
    result = run_cli("config", "show", "coder", "--json", "--vllm-version", "0.10.1+cu128")
    assert result.exit_code == 0, result.output
    vllm = json.loads(result.stdout)["engine"]["vllm"]
    assert vllm["version"] == "0.10.1+cu128" and vllm["checked_as"] == "0.10.1"
    assert isinstance(vllm["notes"], list)


@pytest.mark.parametrize(("version", "code", "fragment"), [
    ("banana", 2, "--vllm-version 'banana' is not a version number"),
    ("0.8.5", 0, "older than the releases read"),
])
def test_config_show_refuses_a_bad_version_and_notes_one_outside_the_tables(version, code, fragment) -> None:
    result = run_cli("config", "show", "coder", "--format", "args", "--vllm-version", version)
    assert result.exit_code == code and fragment in result.stderr, result.output


def test_the_table_file_is_exactly_what_the_script_writes() -> None:
    """Expanded into one table per release and compacted again by the script's own
    compact() and written by its dump(), the file comes back byte for byte: its runs are
    the script's (maximal, in order, each fact once). Whether the facts are true is test_vllm_tables_agree's."""
    import importlib.util

    from animllm_cli.engine.vllm_releases import TABLE_PATH
    from tests.support.helpers import REPO_ROOT

    spec = importlib.util.spec_from_file_location("read_vllm_releases", REPO_ROOT / "scripts" / "read_vllm_releases.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = json.loads(TABLE_PATH.read_text())
    per_release = {r: {"options": {}, "quantization": [], "env": [], "server_modules": {},
                       "stubbed": data["stubbed"].get(r, [])} for r in data["releases"]}

    def each(runs):
        return [data["releases"][i] for first, last in runs for i in range(first, last + 1)]

    for option, forms in data["options"].items():
        for form in forms:
            for release in each(form["releases"]):
                per_release[release]["options"][option] = form["spec"]
    for kind in ("quantization", "env"):
        for name, runs in data[kind].items():
            for release in each(runs):
                per_release[release][kind].append(name)
    for module, forms in data["server_modules"].items():
        for form in forms:
            for release in each(form["releases"]):
                per_release[release]["server_modules"][module] = form["spec"]
    assert script.compact(per_release) == data
    assert script.dump(data) == TABLE_PATH.read_text()


def test_vllm_version_without_an_engine_command_is_refused() -> None:
    result = run_cli("config", "show", "--vllm-version", FIRST)
    assert result.exit_code == 2 and "--vllm-version spells a model's engine command" in result.stderr
