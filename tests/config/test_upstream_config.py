"""`upstream:` in the config: base URLs normalised, secrets kept out of URLs and errors,
local-only keys refused on a remote model unless a lower layer set them (a shipped model
moved to another machine drops them), and fanned-out engine settings skipping it."""

from __future__ import annotations

from pathlib import Path

import pytest

from animllm_cli.config import Overrides, load_config
from animllm_cli.errors import ConfigError
from tests.support.helpers import write


def remote_file(tmp_path: Path, body: str, name: str = "animllm.yaml") -> Path:
    return write(tmp_path / name, body)


@pytest.mark.parametrize("given, base", [
    ("http://gpu2.lan:8000/v1", "http://gpu2.lan:8000"),
    ("http://gpu2.lan:8000/v1/", "http://gpu2.lan:8000"),
    ("https://llm.example.com/openai/v1", "https://llm.example.com/openai"),
    ("http://[::1]:9000", "http://[::1]:9000"),
])
def test_base_urls_are_normalised(tmp_path: Path, given: str, base: str) -> None:
    loaded = load_config(remote_file(tmp_path, f"models: {{far: {{upstream: {{urls: '{given}'}}}}}}\n"))
    assert loaded.config.models["far"].upstream.urls == [base]
    assert loaded.remote_model_names() == ["far"] and "far" not in loaded.local_model_names()


@pytest.mark.parametrize("url, says", [
    ("ftp://h/v1", "not an http:// or https:// URL"),
    ("http:///v1", "not an http:// or https:// URL"),
    ("http://h:99999/v1", "out of range"),
])
def test_bad_urls_are_refused_naming_the_key(tmp_path: Path, url: str, says: str) -> None:
    path = remote_file(tmp_path, f"models:\n  far:\n    upstream:\n      urls: ['{url}']\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}:4: models.far.upstream.urls.0" in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize("url, says", [("http://me:hunter2@h/v1", "credentials"),
                                       ("https://h/v1?api-key=hunter2", "query or fragment"),
                                       ("https://h/v1#hunter2", "query or fragment")])
def test_secrets_in_a_url_are_refused_without_echoing_them(tmp_path: Path, url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(remote_file(tmp_path, f"models: {{far: {{upstream: {{urls: '{url}'}}}}}}\n"))
    assert says in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_shipped_model_made_remote_drops_its_engine_settings(tmp_path: Path) -> None:
    path = remote_file(tmp_path, "models:\n  coder:\n    upstream: {urls: ['http://gpu2:8000'], model: Qwen/Coder}\n")
    loaded = load_config(path)
    spec, view = loaded.config.models["coder"], loaded.model("qwen-coder")  # the shipped alias still routes
    assert spec.source is None and spec.profile is None and spec.extra_args == {}
    assert view.remote and view.settings == {} and view.engine_source == "Qwen/Coder"
    assert "coder" not in loaded.local_model_names()


def test_local_keys_beside_upstream_are_errors(tmp_path: Path) -> None:
    path = remote_file(tmp_path, """
        models:
          far:
            upstream: {urls: ['http://gpu2:8000']}
            max_model_len: 4096
            pin: true
            source: org/model
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert f"{path}:4: models.far.max_model_len: does not apply to a remote model" in text
    assert f"{path}:5: models.far.pin: does not apply" in text
    assert "models.far.upstream: a model has `source`" in text and "not both" in text


def test_a_model_needs_a_source_or_an_upstream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(remote_file(tmp_path, "models: {bare: {profile: small}}\n"))
    assert "models.bare.source: required key is missing (or `upstream:`" in str(caught.value)


def test_fanned_out_engine_settings_skip_remote_models(tmp_path: Path) -> None:
    path = remote_file(tmp_path, "models: {far: {upstream: {urls: 'http://gpu2:8000'}, concurrency: 4}}\n")
    loaded = load_config(path, environ={"MAX_NUM_SEQS": "64"},
                         overrides=Overrides(settings={"max_model_len": (8192, "--max-model-len 8192")}))
    assert loaded.model("far").settings == {"concurrency": 4}
    assert loaded.model("coder").settings["max_num_seqs"] == 64 and loaded.model("coder").settings["max_model_len"] == 8192


def test_a_ca_bundle_is_relative_to_its_file(tmp_path: Path) -> None:
    path = remote_file(tmp_path / "conf", "models: {far: {upstream: {urls: 'https://h', ca_bundle: certs/ca.pem}}}\n")
    assert load_config(path).config.models["far"].upstream.ca_bundle == str(tmp_path / "conf" / "certs" / "ca.pem")


def test_a_remote_model_may_take_concurrency_from_a_profile(tmp_path: Path) -> None:
    path = remote_file(tmp_path, """
        profiles: {remote: {concurrency: 48}}
        models: {far: {upstream: {urls: 'http://gpu2:8000'}, profile: remote}}
    """)
    assert load_config(path).model("far").settings == {"concurrency": 48}
