"""A supervised fake engine (tests/fakes/fake_vllm.py launched by the product's
supervisor), with fast bounds, and the check that nothing of it is left."""

from __future__ import annotations

import json
from pathlib import Path

from animllm_cli.config import load_config
from animllm_cli.engine import processes
from animllm_cli.engine.supervisor import Engine, launch
from tests.fakes.nvml import FakeNvml
from tests.support.helpers import REPO_ROOT, free_port, write

FAST = {"stall_timeout_s": 3, "start_timeout_s": 30, "stop_grace_s": 2, "health_interval_s": 0.2,
        "health_failures": 3}


def fake_config(tmp_path: Path, mode: str, after: float = 1, **engine: object) -> Path:
    # A free port of its own, as in gateways.fake_gateway_config: xdist's workers run at once.
    settings = {**FAST, "port": free_port(), **engine, "module": "tests.fakes.fake_vllm"}
    return write(tmp_path / "fake.yaml", f"""
        inherit_defaults: false
        engine: {json.dumps(settings)}
        env: {{PYTHONPATH: "{REPO_ROOT}", FAKE_VLLM_MODE: {mode}, FAKE_VLLM_AFTER: "{after}"}}
        profiles: {{p: {{max_model_len: 1024}}}}
        models: {{fake: {{source: org/fake-model, profile: p, aliases: [f]}}}}
    """)


def fake_engine(tmp_path: Path, mode: str, after: float = 1, nvml: FakeNvml | None = None, **engine: object) -> Engine:
    loaded = load_config(fake_config(tmp_path, mode, after, **engine))
    deaths: list[str] = []
    result = launch(loaded, "fake", log_dir=tmp_path / "logs", nvml_module=nvml or FakeNvml(missing=True),
                    on_dead=lambda eng, reason: deaths.append(reason))
    result.deaths = deaths  # type: ignore[attr-defined]
    return result


def assert_nothing_left(engine: Engine) -> None:
    assert engine.pid is not None
    assert processes.group_members(engine.pid) == set()
    assert processes.living(engine._known) == set()
