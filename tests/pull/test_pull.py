"""`animllm pull` against the stand-in hub, through the real huggingface_hub client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.hub import FakeHub
from tests.support.helpers import free_port, run_cli, write
from tests.pull.conftest import snapshot_of


def _pull(*args: str, env: dict[str, str] | None = None):
    return run_cli("pull", *args, "--json", env=env)


def _same_files(snapshot: Path, original: Path) -> None:
    for path in original.iterdir():
        assert (snapshot / path.name).read_bytes() == path.read_bytes(), path.name


def test_full_download_then_nothing_to_do(config, hub: FakeHub, hf_cache: Path, tiny_models) -> None:
    result = _pull("tiny")
    assert result.exit_code == 0, result.stderr
    (model,) = json.loads(result.stdout)["models"]
    commit = hub.repos["org/tiny"]["main"].commit
    assert (model["status"], model["commit"], model["revision"]) == ("downloaded", commit, "main")
    assert {f["status"] for f in model["files"]} == {"downloaded"}
    assert model["downloaded_bytes"] == model["total_bytes"] > 0
    _same_files(snapshot_of(hf_cache, "org/tiny", commit), tiny_models["tiny-a"])
    assert (hf_cache / "hub" / "models--org--tiny" / "refs" / "main").read_text() == commit

    before = len(hub.seen)
    again = _pull("tiny")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["models"][0]["status"] == "present"
    assert [s["method"] for s in hub.seen[before:]] == ["GET"]  # model_info only: no HEAD, no file fetched
    assert "/api/models/" in hub.seen[-1]["path"]


def test_the_models_revision_is_honoured(config, hub: FakeHub, hf_cache: Path, tiny_models) -> None:
    result = _pull("tiny2")
    assert result.exit_code == 0, result.stderr
    commit = hub.repos["org/tiny"]["v2"].commit
    assert json.loads(result.stdout)["models"][0]["commit"] == commit
    _same_files(snapshot_of(hf_cache, "org/tiny", commit), tiny_models["tiny-b"])
    assert (hf_cache / "hub" / "models--org--tiny" / "refs" / "v2").read_text() == commit
    assert any(s["path"] == "/api/models/org/tiny/revision/v2" for s in hub.seen)


def test_an_unknown_revision_names_it_and_where_it_came_from(config, hub: FakeHub) -> None:
    result = run_cli("pull", "tiny", "--revision", "nope")
    assert result.exit_code == 1
    assert "revision 'nope' of org/tiny not found" in result.stderr and "--revision" in result.stderr
    write(Path(config).parent / "animllm.yaml", Path(config).read_text().replace("revision: v2", "revision: gone"))
    result = run_cli("pull", "tiny2")
    assert result.exit_code == 1 and "models.tiny2.revision" in result.stderr


def test_a_dropped_connection_resumes_with_a_range_request(config, hub: FakeHub, hf_cache: Path, tiny_models,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 16 * 1024)  # several chunks per file
    hub.cut_after = 100_000
    result = _pull("tiny")
    assert result.exit_code == 0, result.stderr
    ranges = [s["headers"].get("Range") for s in hub.gets() if s["path"].endswith("model.safetensors")]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:].rstrip("-")) > 0
    commit = hub.repos["org/tiny"]["main"].commit
    _same_files(snapshot_of(hf_cache, "org/tiny", commit), tiny_models["tiny-a"])


def test_ctrl_c_keeps_the_partial_file_and_the_next_pull_resumes_it(config, hub: FakeHub, hf_cache: Path,
                                                                    tiny_models, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    hub.interrupt_after = 100_000
    interrupted = run_cli("pull", "tiny")
    assert interrupted.exit_code == 130
    assert "interrupted" in interrupted.stderr and "resume" in interrupted.stderr
    (partial,) = (hf_cache / "hub" / "models--org--tiny" / "blobs").glob("*.incomplete")
    kept = partial.stat().st_size
    assert kept > 0

    hub.interrupt_after = None
    result = _pull("tiny")
    assert result.exit_code == 0, result.stderr
    last = [s for s in hub.gets() if s["path"].endswith("model.safetensors")][-1]
    assert last["headers"].get("Range") == f"bytes={kept}-"
    resumed = [f for f in json.loads(result.stdout)["models"][0]["files"] if f["path"] == "model.safetensors"]
    assert resumed[0]["resumed_from"] == kept
    _same_files(snapshot_of(hf_cache, "org/tiny", hub.repos["org/tiny"]["main"].commit), tiny_models["tiny-a"])
    assert not partial.exists()


def test_a_missing_repo_is_a_clear_error(config, hub: FakeHub) -> None:
    result = run_cli("pull", "missing")
    assert result.exit_code == 1
    assert "repository org/not-there not found at " + hub.url in result.stderr
    assert "HF_TOKEN" in result.stderr  # a private repo looks the same: the hint says what would help
    data = json.loads(_pull("missing").stdout)
    assert data["models"][0]["status"] == "failed" and data["exit_code"] == 1


def test_a_gated_repo_asks_for_hf_token_and_sends_it_as_bearer(config, hub: FakeHub) -> None:
    refused = run_cli("pull", "gated")
    assert refused.exit_code == 1
    assert "org/gated is gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    allowed = _pull("gated", env={"HF_TOKEN": "hf_secret_token"})
    assert allowed.exit_code == 0, allowed.stderr
    assert json.loads(allowed.stdout)["token_from"] == "HF_TOKEN"
    sent = [s["headers"].get("Authorization") for s in hub.seen if "org/gated" in s["path"]]
    assert sent[-1] == "Bearer hf_secret_token" and len(hub.gets("/org/gated/resolve/")) > 0
    assert "hf_secret_token" not in allowed.stdout + allowed.stderr


def test_the_legacy_token_variable_and_the_token_file(config, hub: FakeHub, hf_cache: Path) -> None:
    assert _pull("gated", env={"HUGGING_FACE_HUB_TOKEN": "hf_secret_token"}).exit_code == 0
    wrong = run_cli("pull", "gated", env={"HF_TOKEN": "hf_wrong"})  # an explicit pull asks the hub each time
    assert wrong.exit_code == 1 and "the token from HF_TOKEN has no access" in wrong.stderr
    hf_cache.joinpath("token").write_text("hf_secret_token\n")
    data = json.loads(_pull("gated").stdout)
    assert data["token_from"] == str(hf_cache / "token")


def test_offline_mode(config, hub: FakeHub) -> None:
    missing = run_cli("pull", "tiny", env={"HF_HUB_OFFLINE": "1"})
    assert missing.exit_code == 1
    assert "HF_HUB_OFFLINE" in missing.stderr and "not in the Hugging Face cache" in missing.stderr
    assert hub.seen == []
    assert run_cli("pull", "tiny").exit_code == 0
    before = len(hub.seen)
    present = _pull("tiny", env={"HF_HUB_OFFLINE": "1"})
    assert present.exit_code == 0, present.stderr
    data = json.loads(present.stdout)
    assert data["offline"] is True and data["models"][0]["status"] == "present"
    assert len(hub.seen) == before


def test_offline_from_the_configs_env(config, hub: FakeHub) -> None:
    Path(config).write_text(Path(config).read_text().replace("env: {", 'env: {HF_HUB_OFFLINE: "1", '))
    result = run_cli("pull", "tiny")
    assert result.exit_code == 1 and "HF_HUB_OFFLINE" in result.stderr and hub.seen == []


def test_an_unreachable_hub_names_the_endpoint(config) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = run_cli("pull", "tiny", env={"HF_ENDPOINT": endpoint})
    # the config's env: wins over the shell (as for the engine): point the config at it
    Path(config).write_text(Path(config).read_text().replace("HF_ENDPOINT: \"http", "X: \"http"))
    result = run_cli("pull", "tiny", env={"HF_ENDPOINT": endpoint})
    assert result.exit_code == 1
    assert f"cannot reach the Hugging Face hub at {endpoint}" in result.stderr


def test_local_and_remote_models_need_no_pull(config, hub: FakeHub) -> None:
    result = _pull("localdir", "far")
    assert result.exit_code == 0, result.stderr
    statuses = {m["model"]: m["status"] for m in json.loads(result.stdout)["models"]}
    assert statuses == {"localdir": "local", "far": "remote"}
    assert hub.seen == []


def test_no_model_pulls_every_local_model_not_yet_present(config, hub: FakeHub) -> None:
    assert run_cli("pull", "tiny").exit_code == 0
    Path(config).write_text("\n".join(line for line in Path(config).read_text().splitlines()
                                      if "gated" not in line and "missing" not in line) + "\n")
    data = json.loads(_pull().stdout)
    assert [m["model"] for m in data["models"]] == ["tiny2"]  # not tiny (present), localdir, far


def test_revision_takes_one_model(config) -> None:
    result = run_cli("pull", "tiny", "tiny2", "--revision", "v2")
    assert result.exit_code == 2 and "one model" in result.stderr


def test_progress_lines_when_stderr_is_not_a_terminal(config, hub: FakeHub) -> None:
    result = run_cli("pull", "tiny")
    assert result.exit_code == 0, result.stderr
    assert "tiny: model.safetensors" in result.stderr and "tiny: config.json" in result.stderr
    quiet = run_cli("-q", "pull", "tiny2")
    assert quiet.exit_code == 0 and "model.safetensors" not in quiet.stderr


def test_plan_and_doctor_see_what_pull_downloaded(config, hub: FakeHub, tmp_path: Path) -> None:
    """Where pull writes is where plan and doctor look, HF_HUB_CACHE included (the engine's rule)."""
    elsewhere = {"HF_HUB_CACHE": str(tmp_path / "elsewhere"), "ANIMLLM_GPU__VRAM_GIB": "16"}  # no GPU here
    before = run_cli("plan", "tiny", "--json", env=elsewhere)
    assert json.loads(before.stdout)["models"][0]["weights_present"] is not True
    assert _pull("tiny", env=elsewhere).exit_code == 0
    after = json.loads(run_cli("plan", "tiny", "--json", env=elsewhere).stdout)["models"][0]
    assert after["weights_present"] is True and str(tmp_path / "elsewhere") in after["basis"]
    doctor = json.loads(run_cli("doctor", "--json", "--only", "models", "--model", "tiny", env=elsewhere).stdout)
    (row,) = [c for c in doctor["checks"] if c["id"] == "models"]
    assert row["status"] == "PASS" and "tiny" in row["detail"]


def test_the_token_goes_to_the_hub_and_never_to_the_cdn_a_file_redirects_to(config, hub: FakeHub, hf_cache: Path,
                                                                              tiny_models) -> None:
    cdn = FakeHub()
    cdn.add("org/gated", "main", tiny_models["tiny-b"])  # the same files: the commit is the same
    cdn.start()
    try:
        hub.redirect_to = cdn.url
        result = _pull("gated", env={"HF_TOKEN": "hf_secret_token"})
        assert result.exit_code == 0, result.stderr
        assert cdn.gets() and all("Authorization" not in s["headers"] for s in cdn.seen)
        assert all(s["headers"].get("Authorization") == "Bearer hf_secret_token" for s in hub.seen)
        _same_files(snapshot_of(hf_cache, "org/gated", hub.repos["org/gated"]["main"].commit), tiny_models["tiny-b"])
    finally:
        cdn.stop()


def _blob_partial(hf_cache: Path, data: bytes) -> Path:
    import hashlib

    blobs = hf_cache / "hub" / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / f"{hashlib.sha256(data).hexdigest()}.incomplete"
    return partial


def test_a_partial_file_already_whole_is_not_fetched_and_one_too_long_starts_over(config, hub: FakeHub,
                                                                                  hf_cache: Path, tiny_models) -> None:
    weights = (tiny_models["tiny-a"] / "model.safetensors").read_bytes()
    whole = _blob_partial(hf_cache, weights)
    whole.write_bytes(weights)  # an earlier pull stopped between the last byte and the rename
    config_json = (tiny_models["tiny-a"] / "config.json").read_bytes()
    too_long = _blob_partial(hf_cache, config_json)
    too_long.write_bytes(config_json + b"garbage from a proxy that ignored Range")
    result = _pull("tiny")
    assert result.exit_code == 0, result.stderr
    assert not [s for s in hub.gets() if s["path"].endswith("model.safetensors")]
    (config_get,) = [s for s in hub.gets() if s["path"].endswith("/config.json")]
    assert "Range" not in config_get["headers"]
    _same_files(snapshot_of(hf_cache, "org/tiny", hub.repos["org/tiny"]["main"].commit), tiny_models["tiny-a"])


def test_a_source_that_is_no_repo_id_is_named(config: Path) -> None:
    config.write_text(config.read_text() + '  odd: {source: "Qwen/Qwen2.5 7B", profile: p}\n')
    result = run_cli("pull", "odd")
    assert result.exit_code == 1 and "models.odd.source 'Qwen/Qwen2.5 7B' is not a Hugging Face repo id" in result.stderr
    assert "Traceback" not in result.stderr


def test_names_from_the_hub_never_leave_the_cache(config, hub: FakeHub, hf_cache: Path) -> None:
    hub.repos["org/tiny"]["main"].files["../../escape.txt"] = b"outside"
    result = run_cli("pull", "tiny")
    assert result.exit_code == 1 and "would be written outside" in result.stderr
    assert not list(hf_cache.rglob("escape.txt")) and not (hf_cache / "hub" / "escape.txt").exists()
    assert hub.gets() == []  # every name is checked before any file is fetched


def test_weights_the_index_does_not_name_are_not_downloaded(config, hub: FakeHub, hf_cache: Path) -> None:
    """A repo with its weights twice (Mistral's consolidated.safetensors beside the indexed shards)."""
    files = hub.repos["org/tiny"]["main"].files
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {"w": "model.safetensors"}}).encode()
    files["consolidated.safetensors"] = files["model.safetensors"]
    result = _pull("tiny")
    assert result.exit_code == 0, result.stderr
    (model,) = json.loads(result.stdout)["models"]
    assert "consolidated.safetensors" in model["skipped_files"]
    assert not [s for s in hub.gets() if s["path"].endswith("consolidated.safetensors")]
    index = next(f for f in model["files"] if f["path"] == "model.safetensors.index.json")
    assert index["status"] == "downloaded" and model["downloaded_bytes"] == model["total_bytes"]
    assert run_cli("plan", "tiny", "--json", env={"ANIMLLM_GPU__VRAM_GIB": "16"}).exit_code == 0
