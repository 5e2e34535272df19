"""The doctor's `upstreams` row against real in-process upstream_servers (tests/fakes/upstream.py):
a key's variable, the CA bundle, and each URL's answer to the gateway's own probe. The
key must never show, whatever the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from animllm_cli.client.upstream import Probe, sends_key_in_clear
from animllm_cli.config.schema import UpstreamSpec
from animllm_cli.doctor.host_rows import _judge_remote
from animllm_cli.doctor.registry import FAIL, PASS, WARN
from tests.fakes.upstream import FakeUpstream
from tests.support.helpers import free_port, run_cli, write

KEY = "sk-upstream-7c1f0e"


def serve(upstream_servers: list[FakeUpstream], served: list[str], **kwargs: Any) -> FakeUpstream:
    server = FakeUpstream("there", served, **kwargs).start()
    upstream_servers.append(server)
    return server


def remote_config(tmp_path: Path, upstream: dict[str, Any]) -> Path:
    """The shipped models plus `far`, served elsewhere."""
    return write(tmp_path / "remote.yaml", f"models: {{far: {{upstream: {json.dumps(upstream)}, tasks: [chat]}}}}\n")


def upstreams_row(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """The row as JSON, and the human output of the same run (to check it never shows the key)."""
    result = run_cli("doctor", "--json", "--only", "upstreams", "--config", str(config), *args, env=env)
    human = run_cli("doctor", "--only", "upstreams", "--config", str(config), *args, env=env)
    assert KEY not in result.stdout + result.stderr + human.stdout + human.stderr
    return result.exit_code, json.loads(result.stdout)["checks"][0], human.stdout


def test_every_url_answering_with_the_key_passes_with_its_latency(nvml, engine_env, upstream_servers, tmp_path) -> None:
    first, second = serve(upstream_servers, ["far"], key=KEY), serve(upstream_servers, ["far"], key=KEY)
    config = remote_config(tmp_path, {"urls": [first.url, f"{second.url}/v1"], "api_key_env": "FAR_KEY"})
    code, row, human = upstreams_row(config, env={"FAR_KEY": KEY})
    assert code == 0 and row["status"] == PASS and row["fix"] is None, row
    assert f"{first.url} answers in" in row["detail"] and f"{second.url} answers in" in row["detail"]
    assert " ms" in row["detail"] and "upstreams" in human and "PASS" in human
    assert first.paths_seen() == ["/v1/models", "/v1/models"]  # the JSON run, then the human one


def test_the_name_there_is_what_the_server_must_list(nvml, engine_env, upstream_servers, tmp_path) -> None:
    server = serve(upstream_servers, ["meta-llama/Llama-3.3-70B"])
    config = remote_config(tmp_path, {"urls": server.url, "model": "meta-llama/Llama-3.3-70B"})
    assert upstreams_row(config)[1]["status"] == PASS


def test_a_missing_key_variable_fails_naming_it(nvml, engine_env, upstream_servers, tmp_path) -> None:
    server = serve(upstream_servers, ["far"], key=KEY)
    config = remote_config(tmp_path, {"urls": server.url, "api_key_env": "FAR_KEY"})
    code, row, _ = upstreams_row(config)
    assert code == 1 and row["status"] == FAIL
    assert "FAR_KEY" in row["detail"] and "not set" in row["detail"] and "FAR_KEY" in row["fix"]
    assert server.seen == []  # nothing was sent without the key


def test_a_wrong_key_fails_with_the_url(nvml, engine_env, upstream_servers, tmp_path) -> None:
    server = serve(upstream_servers, ["far"], key="the-right-one")
    config = remote_config(tmp_path, {"urls": server.url, "api_key_env": "FAR_KEY"})
    code, row, _ = upstreams_row(config, env={"FAR_KEY": KEY})
    assert code == 1 and row["status"] == FAIL
    assert f"far: {server.url} refused the key (HTTP 401)" in row["detail"]


def test_a_server_without_the_model_fails_listing_what_it_serves(nvml, engine_env, upstream_servers, tmp_path) -> None:
    server = serve(upstream_servers, ["other-model"])
    code, row, _ = upstreams_row(remote_config(tmp_path, {"urls": server.url}))
    assert code == 1 and row["status"] == FAIL
    assert "does not serve 'far'" in row["detail"] and "other-model" in row["detail"]
    assert "upstream.model" in row["detail"]


def test_a_redirect_fails_and_is_not_followed(nvml, engine_env, upstream_servers, tmp_path) -> None:
    elsewhere = serve(upstream_servers, ["far"])
    server = serve(upstream_servers, ["far"], key=KEY, mode="redirect", redirect_to=elsewhere.url)
    config = remote_config(tmp_path, {"urls": server.url, "api_key_env": "FAR_KEY"})
    code, row, _ = upstreams_row(config, env={"FAR_KEY": KEY})
    assert code == 1 and row["status"] == FAIL and "redirects (HTTP 307)" in row["detail"]
    assert elsewhere.seen == []  # the key never reached the other host


def test_one_url_down_fails_and_names_it(nvml, engine_env, upstream_servers, tmp_path) -> None:
    server, down = serve(upstream_servers, ["far"]), f"http://127.0.0.1:{free_port()}"
    code, row, _ = upstreams_row(remote_config(tmp_path, {"urls": [server.url, down]}))
    assert code == 1 and row["status"] == FAIL
    assert f"far: {down} unreachable" in row["detail"] and f"{server.url} unreachable" not in row["detail"]


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unreadable_ca_bundle_fails_naming_the_key(nvml, engine_env, tmp_path, content) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    config = remote_config(tmp_path, {"urls": "https://gpu-box.example:8443", "ca_bundle": "./ca.pem"})
    code, row, _ = upstreams_row(config)
    assert code == 1 and row["status"] == FAIL
    assert "models.far.upstream.ca_bundle" in row["detail"] and str(bundle) in row["detail"]


def test_no_remote_model_skips(nvml, engine_env) -> None:
    result = run_cli("doctor", "--json", "--only", "upstreams")
    row = json.loads(result.stdout)["checks"][0]
    assert result.exit_code == 0 and row["status"] == "SKIP" and "no model is served elsewhere" in row["detail"]


def test_a_key_over_plain_http_to_another_host_warns() -> None:
    keyed = UpstreamSpec(urls=["http://10.0.0.5:8000", "https://gpu-box.lan", "http://127.0.0.1:9000",
                               "http://localhost:9000"], api_key_env="FAR_KEY")
    assert [sends_key_in_clear(keyed, url) for url in keyed.urls] == [True, False, False, False]
    assert not sends_key_in_clear(UpstreamSpec(urls=["http://10.0.0.5:8000"]), "http://10.0.0.5:8000")
    result = _judge_remote("far", keyed, [Probe(url, True, seconds=0.012) for url in keyed.urls])
    assert result.status == WARN and "plain http to http://10.0.0.5:8000" in result.detail
    assert "FAR_KEY" in result.detail and "https://" in result.fix and "12 ms" in result.detail


def test_the_model_rows_leave_remote_models_out(nvml, engine_env, upstream_servers, tmp_path) -> None:
    server = serve(upstream_servers, ["far"])
    config = remote_config(tmp_path, {"urls": server.url})
    result = run_cli("doctor", "--json", "--skip", "port", "--config", str(config))
    report = json.loads(result.stdout)
    assert "far" not in {p["model"] for p in report["plan"]["models"]} and "far" not in report["plan"]["shares"]
    assert report["plan"]["remote"] == [{"model": "far", "urls": [server.url]}]
    rows = {c["id"]: c for c in report["checks"]}
    assert "far" not in rows["models"]["detail"] and "far" not in rows["sleep-ram"]["detail"]
    assert rows["upstreams"]["status"] == PASS


def test_doctor_for_one_remote_model(nvml, engine_env, upstream_servers, tmp_path) -> None:
    server = serve(upstream_servers, ["far"])
    config = remote_config(tmp_path, {"urls": server.url})
    result = run_cli("doctor", "--json", "--skip", "port", "--model", "far", "--config", str(config))
    rows = {c["id"]: c for c in json.loads(result.stdout)["checks"]}
    assert rows["vram"]["status"] == "SKIP" and "no VRAM here" in rows["vram"]["detail"]
    assert rows["models"]["status"] == "SKIP" and rows["sleep"]["status"] == "SKIP"
    assert rows["upstreams"]["status"] == PASS
    local = run_cli("doctor", "--json", "--only", "upstreams", "--model", "coder", "--config", str(config))
    assert json.loads(local.stdout)["checks"][0]["status"] == "SKIP"


def test_another_animllm_gateway_serves_a_model_by_its_alias() -> None:
    from animllm_cli.client.upstream import judge

    listing = json.dumps({"data": [{"id": "coder", "aliases": ["qwen-coder"], "tasks": ["code"]}]}).encode()
    assert judge("http://h", "qwen-coder", 200, listing, None, keyed=True).ok
    missing = judge("http://h", "code", 200, listing, None, keyed=True)  # a task is not a name it lists
    assert not missing.ok and "it serves: coder" in missing.problem
