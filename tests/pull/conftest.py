"""The pull tests: a stand-in hub (tests/fakes/hub.py) serving the tiny models, and a
config whose engine environment points huggingface_hub at it and at a cache of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.fakes.hub import FakeHub
from tests.support.helpers import free_port, write

HF_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
                "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "VLLM_USE_MODELSCOPE")


@pytest.fixture(autouse=True)
def no_hf_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in HF_VARIABLES:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def hub(tiny_models: dict[str, Path]) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add("org/tiny", "main", tiny_models["tiny-a"])
    fake.add("org/tiny", "v2", tiny_models["tiny-b"])   # another revision, other content
    fake.add("org/gated", "main", tiny_models["tiny-b"])
    fake.gated["org/gated"] = "hf_secret_token"
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def hf_cache(tmp_path: Path) -> Path:
    return tmp_path / "hf"


@pytest.fixture
def config(isolated_env: Path, hub: FakeHub, hf_cache: Path, tiny_models: dict[str, Path]) -> Path:
    return write(isolated_env / "animllm.yaml", f"""
        inherit_defaults: false
        paths: {{hf_cache: "{hf_cache}"}}
        env: {{HF_ENDPOINT: "{hub.url}"}}
        profiles: {{p: {{max_model_len: 512}}}}
        default_model: tiny
        models:
          tiny: {{source: org/tiny, profile: p, tasks: [chat]}}
          tiny2: {{source: org/tiny, profile: p, revision: v2}}
          gated: {{source: org/gated, profile: p}}
          missing: {{source: org/not-there, profile: p}}
          localdir: {{source: "{tiny_models['tiny-a']}", profile: p}}
          far: {{upstream: {{urls: "http://127.0.0.1:{free_port()}", api_key_env: FAR_KEY}}}}
    """)


def snapshot_of(hf_cache: Path, repo: str, commit: str) -> Path:
    return hf_cache / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
