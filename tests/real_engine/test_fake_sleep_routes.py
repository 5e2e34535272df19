"""The fake vLLM's sleep-mode routes against the installed vLLM's own source: the same
methods and paths, registered only in development mode, the same query parameters with
the same defaults and ranges, and answers with the same JSON keys. The CPU build cannot
sleep, so the gateway's sleep tests run on the fake: this keeps the fake honest.

vLLM is read with `ast`, never imported. Both layouts are understood: routes inside
`if envs.VLLM_SERVER_DEV_MODE:` in entrypoints/openai/api_server.py (0.8-0.12), and
routers under entrypoints/serve/ attached only in dev mode (0.13+; serve/dev/ since)."""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from animllm_cli.engine import sleep
from tests.fakes import fake_vllm
from tests.support.gateways import remote_fake_vllm

pytestmark = pytest.mark.engine


@dataclass
class Route:
    method: str
    path: str
    file: Path
    dev_only: bool
    query: dict[str, dict] = field(default_factory=dict)   # name -> {"default": ..., "ge": ..., "le": ..., "literal": name}
    keys: set[str] | None = None                            # the JSON keys of its answer; None: an empty 200


def vllm_dir() -> Path:
    spec = importlib.util.find_spec("vllm")
    return Path(spec.submodule_search_locations[0])


def _decorated_route(node: ast.AST) -> tuple[str, str] | None:
    for decorator in getattr(node, "decorator_list", []):
        if isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute) \
                and decorator.func.attr in ("get", "post") and decorator.args \
                and isinstance(decorator.args[0], ast.Constant):
            return decorator.func.attr.upper(), decorator.args[0].value
    return None


def _literal(node: ast.AST):
    """A default: a constant, or `Query(default=...)`."""
    if isinstance(node, ast.Call):
        return next((_literal(k.value) for k in node.keywords if k.arg == "default"), None)
    return ast.literal_eval(node)


def _query(function: ast.AsyncFunctionDef) -> dict[str, dict]:
    """Query parameters: annotated arguments (Query(ge=, le=), a Literal alias) and
    `raw_request.query_params.get("name", default)` / `.getlist("name")` in the body."""
    found: dict[str, dict] = {}
    args = function.args.args
    defaults = dict(zip([a.arg for a in args[len(args) - len(function.args.defaults):]], function.args.defaults))
    for arg in args:
        if arg.arg == "raw_request" or arg.annotation is None:
            continue
        info: dict = {"default": _literal(defaults[arg.arg]) if arg.arg in defaults else None}
        for sub in ast.walk(arg.annotation):
            if isinstance(sub, ast.Call) and getattr(sub.func, "id", None) == "Query":
                info.update({k.arg: _literal(k.value) for k in sub.keywords if k.arg in ("ge", "le", "default")})
            if isinstance(sub, ast.Name) and sub.id not in ("Annotated", "Query", "int", "bool", "str"):
                info["literal"] = sub.id
        found[arg.arg] = info
    for sub in ast.walk(function):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr in ("get", "getlist") \
                and isinstance(sub.func.value, ast.Attribute) and sub.func.value.attr == "query_params":
            default = ast.literal_eval(sub.args[1]) if len(sub.args) > 1 else None
            found.setdefault(sub.args[0].value, {"default": default})
    return found


def _answer_keys(function: ast.AsyncFunctionDef) -> set[str] | None:
    for sub in ast.walk(function):
        if isinstance(sub, ast.Call) and getattr(sub.func, "id", None) == "JSONResponse":
            content = next((k.value for k in sub.keywords if k.arg == "content"), sub.args[0] if sub.args else None)
            if isinstance(content, ast.Dict):
                return {k.value for k in content.keys if isinstance(k, ast.Constant)}
    return None


def _dev_mode_test(node: ast.AST) -> bool:
    return "VLLM_SERVER_DEV_MODE" in ast.unparse(node)


def installed_routes() -> dict[tuple[str, str], Route]:
    root = vllm_dir() / "entrypoints"
    routes: dict[tuple[str, str], Route] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(errors="replace")
        if '"/sleep"' not in text and '"/wake_up"' not in text and '"/collective_rpc"' not in text \
                and '"/reset_prefix_cache"' not in text and '"/is_sleeping"' not in text \
                and '"/release_kv_cache_memory"' not in text:
            continue
        tree = ast.parse(text)
        # Under an `if ... VLLM_SERVER_DEV_MODE` (old layout), in a serve/dev/ router, or in a
        # router whose attach_router returns unless dev mode is on (0.13-era layout).
        guarded = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _dev_mode_test(block.test)
                   for n in ast.walk(block)}
        attach = next((f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "attach_router"), None)
        router_dev_only = "dev" in path.relative_to(root).parts or (attach is not None and _dev_mode_test(attach))
        for node in ast.walk(tree):
            found = _decorated_route(node)
            if found is None:
                continue
            routes[found] = Route(found[0], found[1], path, id(node) in guarded or router_dev_only,
                                  _query(node), _answer_keys(node))
    return routes


def literal_values(name: str) -> tuple:
    """The values of a `Name = Literal[...]` alias anywhere in vLLM (PauseMode)."""
    for path in (vllm_dir() / "v1" / "engine").rglob("*.py"):
        for node in ast.parse(path.read_text(errors="replace")).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name \
                    and isinstance(node.value, ast.Subscript):
                return tuple(ast.literal_eval(node.value.slice))
    raise AssertionError(f"no Literal alias {name} in vLLM")


@pytest.fixture(scope="module")
def routes() -> dict[tuple[str, str], Route]:
    found = installed_routes()
    assert ("POST", "/sleep") in found, f"no /sleep route found in {vllm_dir()}"
    return found


def test_the_fake_has_exactly_the_routes_the_pool_relies_on_and_vllm_defines(routes) -> None:
    fake = {(method, path) for method, path, _ in fake_vllm.DEV_ROUTES}
    sleepy = {key for key in routes if key[1] in {"/sleep", "/wake_up", "/is_sleeping", "/release_kv_cache_memory"}}
    assert sleepy <= fake, f"vLLM has sleep routes the fake lacks: {sleepy - fake}"
    assert fake <= set(routes), f"the fake has routes this vLLM does not: {fake - set(routes)}"
    for key in fake:
        assert routes[key].dev_only, f"{key} is registered outside development mode in {routes[key].file}"
    used = {("POST", "/sleep"), ("POST", "/wake_up"), ("POST", "/collective_rpc"), ("POST", "/reset_prefix_cache")}
    assert used <= set(routes), f"engine/sleep.py calls routes this vLLM lacks: {used - set(routes)}"


def test_sleep_takes_the_same_query_parameters(routes) -> None:
    query = routes["POST", "/sleep"].query
    assert set(query) == set(fake_vllm.SLEEP_QUERY), query
    for name, (default, allowed) in fake_vllm.SLEEP_QUERY.items():
        theirs = query[name]
        assert str(theirs["default"]) == str(default), (name, theirs)
        if "ge" in theirs:
            assert allowed == tuple(range(theirs["ge"], theirs["le"] + 1)), (name, theirs)
        if "literal" in theirs:
            assert set(allowed) == set(literal_values(theirs["literal"])), (name, theirs)
    assert "tags" in routes["POST", "/wake_up"].query


@pytest.fixture(scope="module")
def fake_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with remote_fake_vllm(tmp_path_factory.mktemp("fake-engine"), served_name="m", env={"VLLM_SERVER_DEV_MODE": "1"},
                          args=("--enable-sleep-mode",)) as (url, _):
        yield url


def test_the_fake_answers_with_the_keys_vllm_answers_with(routes, fake_engine) -> None:
    calls = [("POST", "/sleep", {"level": 1}), ("GET", "/is_sleeping", {}), ("POST", "/wake_up", {}),
             ("POST", "/release_kv_cache_memory", {}), ("POST", "/reset_prefix_cache", {})]
    for method, path, params in calls:
        reply = httpx.request(method, f"{fake_engine}{path}", params=params)
        assert reply.status_code == 200, (path, reply.text)
        expected = routes[method, path].keys
        assert (set(reply.json()) if reply.content else None) == expected, path
    rpc = httpx.post(f"{fake_engine}/collective_rpc", json={"method": "reload_weights"})
    assert rpc.status_code == 200 and set(rpc.json()) <= ({"results"} | (routes["POST", "/collective_rpc"].keys or set()))
    assert httpx.post(f"{fake_engine}/sleep", params={"level": 3}).status_code == 422   # as Query(le=2)


def test_the_client_sends_what_the_routes_take() -> None:
    """engine/sleep.py's level-2 wake is vLLM's documented order, on the routes above."""
    import inspect

    source = inspect.getsource(sleep.wake)
    order = [source.index(s) for s in ('"tags": "weights"', '"reload_weights"', '"tags": "kv_cache"', "/reset_prefix_cache")]
    assert order == sorted(order)
