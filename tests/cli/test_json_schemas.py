"""Every `--json` output has exactly the keys, at every level, of the example docs/json.md
documents for it, so the docs and the code cannot drift.

The examples' conventions: `{"...": "as plan --json"}` stands for another command's
documented object (`, plus first_token_s` adds keys to it); `{"<model>": 42.0}` is a map
whose keys are data; a list's first element stands for every element.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.support.gateways import fake_gateway_config, remote_fake_vllm, start_gateway
from tests.support.helpers import REPO_ROOT, free_port, run_cli, write
from tests.support.waiting import wait_until

JSON_DOC = REPO_ROOT / "docs" / "json.md"
REFERENCE = re.compile(r"as (?P<name>[a-z ]+?) --json(?: (?P<key>[\w.]+))?(?:, plus (?P<extra>[\w, ]+))?$")


def documented_schemas() -> dict[str, Any]:
    """Command name -> the JSON example docs/json.md gives for it."""
    pieces = re.split(r"```json\n(.*?)\n```", JSON_DOC.read_text(), flags=re.S)
    schemas = {}
    for prose, example in zip(pieces[0::2], pieces[1::2]):
        # the command named last before an example is the one it documents
        schemas[re.findall(r"`animllm ([a-zA-Z ,-]+?) --json", prose)[-1]] = json.loads(example)
    return schemas


SCHEMAS = documented_schemas()


def _expand(documented: Any) -> Any:
    """A reference to another command's example, replaced by that example."""
    if isinstance(documented, dict) and set(documented) == {"..."}:
        match = REFERENCE.match(documented["..."])
        assert match, f"unreadable reference in docs/json.md: {documented}"
        extra = [key.strip() for key in (match["extra"] or "").split(",") if key.strip()]
        target = SCHEMAS[match["name"]]
        for key in (match["key"] or "").split(".") if match["key"] else []:
            # one object inside another command's example (a list's: its first element)
            target = _expand(target[key])
            target = _expand(target[0]) if isinstance(target, list) else target
        return {**target, **dict.fromkeys(extra)}
    return documented


def _is_map(documented: dict) -> bool:
    return len(documented) == 1 and re.fullmatch(r"<\w+>", next(iter(documented))) is not None


def _compare(actual: Any, documented: Any, path: str, problems: list[str], seen: set[str]) -> None:
    documented = _expand(documented)
    if isinstance(documented, dict) and isinstance(actual, dict):
        seen.add(path)
        if _is_map(documented):
            (value,) = documented.values()
            for item in actual.values():
                _compare(item, value, f"{path}.<>", problems, seen)
            return
        missing, extra = sorted(set(documented) - set(actual)), sorted(set(actual) - set(documented))
        if missing or extra:
            problems.append(f"{path}: documented but not output {missing}; output but not documented {extra}")
        for key in documented.keys() & actual.keys():
            _compare(actual[key], documented[key], f"{path}.{key}", problems, seen)
    elif isinstance(documented, list) and isinstance(actual, list) and documented:
        for item in actual:
            _compare(item, documented[0], f"{path}[]", problems, seen)
    # anything else is a value (null where a number or object may also come): not a key


def _object_paths(documented: Any, path: str = "$") -> set[str]:
    documented = _expand(documented)
    if isinstance(documented, dict):
        if _is_map(documented):
            return {path} | _object_paths(next(iter(documented.values())), f"{path}.<>")
        return {path}.union(*(_object_paths(value, f"{path}.{key}") for key, value in documented.items()))
    if isinstance(documented, list) and documented:
        return _object_paths(documented[0], f"{path}[]")
    return set()


def assert_matches_docs(command: str, output: Any, *, not_exercised: set[str] = frozenset()) -> None:
    """The keys of `output` at every level equal docs/json.md's; and the output reached
    every documented object (but `not_exercised`), so no part passes by being absent."""
    problems: list[str] = []
    seen: set[str] = set()
    _compare(output, SCHEMAS[command], "$", problems, seen)
    assert problems == [], f"`{command} --json` and docs/json.md differ:\n" + "\n".join(problems)
    assert _object_paths(SCHEMAS[command]) - seen - set(not_exercised) == set()


def test_the_docs_document_each_json_output() -> None:
    assert {"models", "doctor", "plan", "plan --together A,B", "status", "ps", "switch", "stop", "bench",
            "pull"} <= set(SCHEMAS)


@pytest.fixture
def with_remote(isolated_env: Path) -> None:
    """The shipped models plus one served elsewhere (nothing listens there), so that every
    object docs/json.md documents is output."""
    write(isolated_env / "animllm.yaml", f"models: {{far: {{upstream: {{urls: 'http://127.0.0.1:{free_port()}', "
                                         f"api_key_env: FAR_KEY}}}}}}\n")


def test_models_json(with_remote) -> None:
    result = run_cli("models", "--json")
    assert result.exit_code == 0, result.stderr
    assert_matches_docs("models", json.loads(result.stdout))


@pytest.fixture
def one_busy_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml([FakeGpu(compute=[(4321, 2 * GIB)])])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_doctor_json(one_busy_gpu, with_remote, monkeypatch: pytest.MonkeyPatch) -> None:
    from animllm_cli.engine import python_env

    installed = python_env.PythonEnv(sys.executable, python="3.11.7", packages={"torch": "2.7.0+cu128", "vllm": "0.10.0"},
                                     requires={"vllm": ["torch==2.7.0"], "torch": []})
    monkeypatch.setattr(python_env, "probe_python", lambda executable, extra=None: installed)
    result = run_cli("doctor", "--json", "--skip", "port")
    # a measured start-up: tests/bench/test_startup_with_fake.py
    assert_matches_docs("doctor", json.loads(result.stdout), not_exercised={"$.plan.models[].startup"})


def test_plan_json(with_remote) -> None:
    result = run_cli("plan", "--json", "--vram", "16")
    # a measured start-up: tests/bench/test_startup_with_fake.py
    assert_matches_docs("plan", json.loads(result.stdout), not_exercised={"$.models[].startup"})


def test_plan_together_json() -> None:
    result = run_cli("plan", "--together", "coder,vision", "--vram", "16", "--max-model-len", "4096", "--json")
    assert_matches_docs("plan --together A,B", json.loads(result.stdout))


def _gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra_models: dict | None = None):
    config = fake_gateway_config(tmp_path, chunk_delay=0.002, extra_models=extra_models)
    config.write_text(config.read_text() + "expectations: {p: {ttft_s_max: 60, tokens_per_s_min: 0.01, switch_s_max: 600}}\n")
    monkeypatch.setenv("ANIMLLM_CONFIG", str(config))
    return start_gateway(tmp_path, config, nvml=FakeNvml([FakeGpu()]))


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    running = _gateway(tmp_path, monkeypatch)
    yield running
    running.stop()


@pytest.fixture
def gateway_with_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The fake gateway, and `r` served by another (fake) vLLM, so that `remotes` has an entry."""
    with remote_fake_vllm(tmp_path, served_name="there") as (url, _process):
        upstream = {"urls": [url], "model": "there", "health_interval_s": 0.2}
        running = _gateway(tmp_path, monkeypatch, extra_models={"r": {"upstream": upstream, "tasks": ["remote"]}})
        remote = running.gateway.upstreams.get("r")
        wait_until(lambda: remote.upstreams[0].healthy is not None, 30, "the first health check")
        yield running
        running.stop()


def test_switch_and_status_json(gateway_with_remote) -> None:
    gateway = gateway_with_remote
    switched = run_cli("switch", "b", "--json")
    assert switched.exit_code == 0, switched.stderr
    assert_matches_docs("switch", json.loads(switched.stdout))
    with gateway.one_waiting(busy="b", waiting="a"):  # so that `queues` has an entry
        status = run_cli("status", "--json")
    assert status.exit_code == 0, status.stderr
    # last_switch is the single-slot view's (the `engine` object), never an entry of `engines`
    assert_matches_docs("status", json.loads(status.stdout),  # clients: tests/gateway/test_clients_with_fake.py
                        not_exercised={"$.engines[].last_switch", "$.clients.<>"})
    assert json.loads(status.stdout)["queues"]["a"]["waiting"] == 1
    with gateway.one_waiting(busy="b", waiting="a"):
        ps = run_cli("ps", "--json")
    assert ps.exit_code == 0, ps.stderr
    assert_matches_docs("ps", json.loads(ps.stdout), not_exercised={"$.engines[].last_switch"})
    unloaded = run_cli("unload", "b", "--json")
    assert unloaded.exit_code == 0, unloaded.stderr
    assert_matches_docs("switch", json.loads(unloaded.stdout))
    remote = run_cli("switch", "r", "--json")
    assert remote.exit_code == 0, remote.stderr
    assert_matches_docs("switch", json.loads(remote.stdout))


def test_bench_json_with_samples_switch_and_check(gateway) -> None:
    result = run_cli("bench", "--concurrency", "1", "-n", "3", "--input-len", "8", "--output-len", "4",
                     "--switch", "a,b", "--switch-rounds", "1", "--samples", "--check", "--goodput", "ttft:60000", "--json")
    assert result.exit_code == 0, result.stderr
    # these engines cannot sleep (a CPU build of vLLM): tests/gateway/test_sleep_with_fake.py has the wakes
    asleep = {f"$.switch.summary.{name}" for name in ("sleep_s", "wake_s", "first_token_after_wake_s")}
    assert_matches_docs("bench", json.loads(result.stdout), not_exercised=asleep)


def test_bench_json_leaves_out_what_was_not_asked_for(gateway) -> None:
    result = run_cli("bench", "-n", "2", "--input-len", "8", "--output-len", "4", "--json")
    data = json.loads(result.stdout)
    assert set(SCHEMAS["bench"]) - set(data) == {"switch", "check"} and data["goodput_slo"] is None
    assert set(SCHEMAS["bench"]["levels"][0]) - set(data["levels"][0]) == {"samples"}


def test_bench_mix_json(gateway) -> None:
    result = run_cli("bench-mix", "a,b", "--request-rate", "50", "-n", "6", "--input-len", "4", "--output-len", "2",
                     "--goodput", "ttft:60000", "--samples", "--check", "--json")
    assert result.exit_code == 0, result.stderr
    # a switch into b (a cold start: these engines cannot sleep) is made during the run
    asleep = {f"$.switch.summary.{name}" for name in ("sleep_s", "wake_s", "first_token_after_wake_s",
                                                        "first_token_s", "first_token_after_cold_s",
                                                        "vram_release_s")}
    assert_matches_docs("bench-mix", json.loads(result.stdout), not_exercised=asleep)


def test_bench_compare_json(tmp_path: Path) -> None:
    from tests.support.saved_runs import saved_run

    a, b = saved_run(tmp_path / "a.json"), saved_run(tmp_path / "b.json", slower=2.0, levels=(1, 4, 16))
    result = run_cli("bench-compare", str(a), str(b), "--json")
    assert result.exit_code == 0, result.stderr
    assert_matches_docs("bench-compare", json.loads(result.stdout))


def test_stop_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `stop` waits for the gateway's process to exit: it needs a gateway of its own (detached).
    monkeypatch.setenv("ANIMLLM_CONFIG", str(fake_gateway_config(tmp_path)))
    started = run_cli("serve", "a", "--port", str(free_port()), "--detach")
    assert started.exit_code == 0, started.stderr
    stopped = run_cli("stop", "--json")
    assert stopped.exit_code == 0, stopped.stderr
    assert_matches_docs("stop", json.loads(stopped.stdout))


def test_pull_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes.hub import FakeHub

    model = write(tmp_path / "m" / "config.json", "{}").parent
    write(model / "model.safetensors", "weights")
    write(model / "original" / "consolidated.pth", "not read by vLLM")
    hub = FakeHub()
    hub.add("org/m", "main", model)
    hub.start()
    try:
        for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        write(Path.cwd() / "animllm.yaml", f"""
            inherit_defaults: false
            paths: {{hf_cache: "{tmp_path / 'hf'}"}}
            env: {{HF_ENDPOINT: "{hub.url}"}}
            profiles: {{p: {{max_model_len: 512}}}}
            models: {{m: {{source: org/m, profile: p}}}}
        """)
        result = run_cli("pull", "m", "--json")
        assert result.exit_code == 0, result.stderr
        assert_matches_docs("pull", json.loads(result.stdout))
    finally:
        hub.stop()


def test_top_json(gateway_with_remote, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu()]))  # the GPUs `top` reads here
    with gateway_with_remote.one_waiting(busy="a", waiting="b"):  # so that `queues` has an entry
        result = run_cli("top", "--once", "--json", "--interval", "0.2")
    assert result.exit_code == 0, result.stderr
    assert_matches_docs("top --once", json.loads(result.stdout), not_exercised={"$.clients.<>"})  # as status's
