"""Each layer wins over the one below it, and every value says where it came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from animllm_cli.config import Overrides, load_config
from animllm_cli.errors import ConfigError
from tests.support.helpers import SHIPPED_CONFIG, write


def _setting(loaded, model: str, key: str):
    view = loaded.model(model)
    return view.settings[key], view.sources[key]


def test_shipped_default_is_the_bottom_layer(isolated_env: Path) -> None:
    loaded = load_config()
    value, source = _setting(loaded, "coder", "max_model_len")
    assert value == 32768
    assert source.kind == "default" and source.line is not None
    assert SHIPPED_CONFIG.read_text().splitlines()[source.line - 1].strip() == "max_model_len: 32768"


def test_user_config_dir_beats_shipped_default() -> None:
    user_file = Path(os.environ["ANIMLLM_CONFIG_DIR"]) / "animllm.yaml"
    write(user_file, """
        models:
          coder:
            max_model_len: 8192
    """)
    value, source = _setting(load_config(), "coder", "max_model_len")
    assert value == 8192
    assert (source.kind, source.origin, source.line) == ("file", str(user_file.resolve()), 3)


def test_project_file_beats_user_config_dir(isolated_env: Path) -> None:
    write(Path(os.environ["ANIMLLM_CONFIG_DIR"]) / "animllm.yaml", "models: {coder: {max_model_len: 8192}}\n")
    write(isolated_env / "animllm.yaml", "models: {coder: {max_model_len: 4096}}\n")
    value, source = _setting(load_config(), "coder", "max_model_len")
    assert value == 4096 and source.origin == str((isolated_env / "animllm.yaml").resolve())


def test_explicit_config_replaces_discovered_files(isolated_env: Path, tmp_path: Path) -> None:
    write(isolated_env / "animllm.yaml", "models: {coder: {max_model_len: 4096, max_num_seqs: 3}}\n")
    explicit = write(tmp_path / "other.yaml", "models: {coder: {max_model_len: 2048}}\n")
    loaded = load_config(explicit)
    assert loaded.files == [explicit.resolve()]
    assert _setting(loaded, "coder", "max_model_len")[0] == 2048
    assert _setting(loaded, "coder", "max_num_seqs")[0] == 256  # ./animllm.yaml was not read


def test_animllm_config_env_names_the_file(tmp_path: Path) -> None:
    explicit = write(tmp_path / "viaenv.yaml", "models: {coder: {max_model_len: 1024}}\n")
    loaded = load_config(environ={"ANIMLLM_CONFIG": str(explicit)})
    assert _setting(loaded, "coder", "max_model_len")[0] == 1024


def test_env_override_beats_user_file(isolated_env: Path) -> None:
    write(isolated_env / "animllm.yaml", "models: {coder: {max_model_len: 4096}}\nserver: {port: 8001}\n")
    loaded = load_config(environ={"ANIMLLM_MODELS__CODER__MAX_MODEL_LEN": "2048", "ANIMLLM_SERVER__PORT": "9100"})
    value, source = _setting(loaded, "coder", "max_model_len")
    assert value == 2048 and str(source) == "env ANIMLLM_MODELS__CODER__MAX_MODEL_LEN"
    assert loaded.config.server.port == 9100


def test_seed_env_vars_apply_to_every_model_over_files(isolated_env: Path) -> None:
    write(isolated_env / "animllm.yaml", "models: {coder: {gpu_memory_utilization: 0.5}}\n")
    loaded = load_config(environ={"GPU_MEMORY_UTILIZATION": "0.7", "MAX_NUM_SEQS": "12",
                                  "MAX_NUM_BATCHED_TOKENS": "2048"})
    for name in loaded.model_names():
        view = loaded.model(name)
        assert view.settings["gpu_memory_utilization"] == 0.7
        assert view.settings["max_num_seqs"] == 12
        assert view.settings["max_num_batched_tokens"] == 2048
        assert str(view.sources["gpu_memory_utilization"]) == "env GPU_MEMORY_UTILIZATION"


def test_specific_env_override_beats_seed_env_var() -> None:
    loaded = load_config(environ={"GPU_MEMORY_UTILIZATION": "0.7",
                                  "ANIMLLM_MODELS__REASONING__GPU_MEMORY_UTILIZATION": "0.8"})
    assert _setting(loaded, "reasoning", "gpu_memory_utilization")[0] == 0.8
    assert _setting(loaded, "coder", "gpu_memory_utilization")[0] == 0.7


def test_flag_beats_env_override() -> None:
    overrides = Overrides(sets=["server.port=9200", "models.coder.max_num_seqs=5"],
                          settings={"gpu_memory_utilization": (0.6, "--gpu-memory-utilization 0.6")})
    loaded = load_config(overrides=overrides, environ={"GPU_MEMORY_UTILIZATION": "0.7", "ANIMLLM_SERVER__PORT": "9100",
                                                       "ANIMLLM_MODELS__CODER__MAX_NUM_SEQS": "7"})
    assert loaded.config.server.port == 9200
    assert str(loaded.source_of(("server", "port"))) == "flag --set server.port=9200"
    assert _setting(loaded, "coder", "max_num_seqs")[0] == 5
    value, source = _setting(loaded, "vision", "gpu_memory_utilization")
    assert value == 0.6 and str(source) == "flag --gpu-memory-utilization 0.6"


def test_setting_flag_for_one_model_leaves_the_others() -> None:
    overrides = Overrides(settings={"max_model_len": (1024, "--max-model-len 1024")}, model="qwen-coder")
    loaded = load_config(overrides=overrides)
    assert _setting(loaded, "coder", "max_model_len")[0] == 1024
    assert _setting(loaded, "vision", "max_model_len")[0] == 16384


def test_model_key_beats_its_profile_key(isolated_env: Path) -> None:
    write(isolated_env / "animllm.yaml", """
        profiles: {small: {max_num_seqs: 64}}
        models: {coder: {max_num_seqs: 16}}
    """)
    loaded = load_config()
    assert _setting(loaded, "coder", "max_num_seqs")[0] == 16
    assert _setting(loaded, "vision", "max_num_seqs")[0] == 64


def test_null_removes_a_shipped_model(isolated_env: Path) -> None:
    write(isolated_env / "animllm.yaml", "models: {qwen72b: null}\n")
    assert "qwen72b" not in load_config().model_names()


def test_inherit_defaults_false_stands_alone(tmp_path: Path) -> None:
    alone = write(tmp_path / "alone.yaml", """
        inherit_defaults: false
        profiles: {p: {max_model_len: 128}}
        models: {m: {source: org/model, profile: p}}
    """)
    loaded = load_config(alone)
    assert loaded.model_names() == ["m"]
    assert loaded.config.env == {}
    assert loaded.catalogue.resolve(None) == "m"  # the only model is the default


def test_dotenv_beside_the_config_joins_the_engine_env(isolated_env: Path) -> None:
    from animllm_cli.engine.command import build_engine_command

    write(isolated_env / "animllm.yaml", "env: {VLLM_LOGGING_LEVEL: INFO, XFORMERS_DISABLED: '1'}\n")
    write(isolated_env / ".env", "XFORMERS_DISABLED=0\nHF_TOKEN=hf_secret_value\n")
    loaded = load_config()
    command = build_engine_command(loaded, loaded.model("coder"))
    assert command.env["VLLM_LOGGING_LEVEL"] == "INFO"
    assert command.env["XFORMERS_DISABLED"] == "0"          # .env beats the env: section
    assert command.env["HF_TOKEN"] == "hf_secret_value"
    assert command.env_sources["HF_TOKEN"].origin == str(isolated_env / ".env")


def test_relative_paths_are_relative_to_the_file_that_set_them(tmp_path: Path) -> None:
    config = write(tmp_path / "proj" / "cfg.yaml", """
        paths: {hf_cache: ./hf}
        models: {local: {source: ./weights/m, profile: small}}
    """)
    loaded = load_config(config)
    assert loaded.config.paths.hf_cache == str(tmp_path / "proj" / "hf")
    assert loaded.model("local").engine_source == str(tmp_path / "proj" / "weights" / "m")


def test_models_dir_resolves_bare_names(tmp_path: Path) -> None:
    (tmp_path / "models" / "MyModel").mkdir(parents=True)
    config = write(tmp_path / "cfg.yaml", f"""
        paths: {{models: {tmp_path / 'models'}}}
        models: {{mine: {{source: MyModel, profile: small}}}}
    """)
    loaded = load_config(config)
    assert loaded.model("mine").engine_source == str(tmp_path / "models" / "MyModel")
    assert loaded.model("coder").engine_source == "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"


@pytest.mark.parametrize("wanted", ["coder", "qwen-coder", "QWEN-CODER", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", None])
def test_model_found_by_name_alias_or_source(wanted: str | None) -> None:
    assert load_config().catalogue.resolve(wanted) == "coder"


def test_env_override_value_of_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"MAX_NUM_SEQS": "many"})
    assert info.value.problems == [
        "env MAX_NUM_SEQS: models.*.max_num_seqs: Input should be a valid integer, "
        "unable to parse string as an integer (got 'many')"]
