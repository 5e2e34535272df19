"""YAML anchors and aliases: a shared block keeps working; a file whose aliases expand
without bound (nested anchors, a "billion laughs") or refer to themselves is an exit-2
config error naming the file and line, found before anything is expanded."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from tests.support.helpers import run_cli, write


def _laughs(levels: int = 6, width: int = 7) -> str:
    keys = [f"k{i}" for i in range(width)]
    lines = ["profiles:", "  x0: &a0 {" + ", ".join(f"{k}: 1" for k in keys) + "}"]
    for level in range(1, levels):
        lines.append(f"  x{level}: &a{level} {{" + ", ".join(f"{k}: *a{level - 1}" for k in keys) + "}")
    return "\n".join(lines) + "\n"


def _show(config: Path):
    started = time.monotonic()
    result = run_cli("config", "show", "--config", str(config))
    return result, time.monotonic() - started


def test_billion_laughs_is_a_config_error_found_quickly(tmp_path: Path) -> None:
    config = write(tmp_path / "laughs.yaml", _laughs())   # 7**6 = 117,649 keys once expanded
    result, took = _show(config)
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    assert f"{config}:" in result.stderr and "aliases expand to more than 10,000" in result.stderr
    line = int(result.stderr.split(f"{config}:")[1].split(":")[0])
    assert 3 <= line <= 6, result.stderr                  # the alias that crossed the bound
    assert took < 3.0, f"took {took:.1f} s"


def test_self_referencing_anchor_is_a_config_error(tmp_path: Path) -> None:
    for text, line in (("profiles:\n  small: &a\n    extra: *a\n", 3),
                       ("models:\n  coder:\n    aliases: &a [*a]\n", 3),
                       ("a: &a [*a]\n", 1)):
        config = write(tmp_path / "recursive.yaml", text)
        result, took = _show(config)
        assert result.exit_code == 2, (text, result.stdout)
        assert f"{config}:{line}: alias *a refers to the value it is part of" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and took < 3.0


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    config = write(tmp_path / "deep.yaml", "env:\n  X: " + "[" * 5000 + "]" * 5000 + "\n")
    result, _ = _show(config)
    assert result.exit_code == 2 and f"{config}: values nested too deeply" in result.stderr


def test_shared_profile_blocks_and_merge_keys_still_work(tmp_path: Path) -> None:
    header = textwrap.dedent("""\
        inherit_defaults: false
        env: &env
          VLLM_CPU_KVCACHE_SPACE: "1"
        profiles:
          base: &base
            gpu_memory_utilization: 0.3
            max_model_len: 512
          long:
            <<: *base
            max_model_len: 1024
        default_model: m0
        models:
          m0: {source: org/m0, profile: base, tasks: &tasks [chat, code], extra_args: &args {max_logprobs: 5}}
    """)
    models = "".join(f"  m{i}: {{source: org/m{i}, profile: long, tasks: *tasks, extra_args: *args}}\n"
                     for i in range(1, 40))
    config = write(tmp_path / "shared.yaml", header + models)
    result = run_cli("config", "show", "--config", str(config), "--format", "json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["profiles"]["long"] == {**shown["profiles"]["base"], "max_model_len": 1024}
    assert shown["profiles"]["base"]["gpu_memory_utilization"] == 0.3
    assert len(shown["models"]) == 40 and shown["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert all(m["tasks"] == ["chat", "code"] and m["extra_args"] == {"max_logprobs": 5} for m in shown["models"].values())
