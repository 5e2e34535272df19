"""Run inside the engine's interpreter: the routes the installed vLLM's own build_app puts
on its app, without an engine or a model. Arguments: model task sets, each comma-separated
("generate" "transcription,realtime"). Prints one JSON line: for each task set, path ->
[methods, body], body as FastAPI reads the handler's parameters (json, multipart, none).
FastAPI's own pages (/docs, /openapi.json, ...) and mounts are left out."""

import importlib
import json
import sys
from pathlib import Path


def build_app():
    for name in ("vllm.entrypoints.launchers.app", "vllm.entrypoints.openai.api_server"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "build_app"):
            return module.build_app
    raise ModuleNotFoundError("no build_app in vllm.entrypoints.{launchers.app,openai.api_server}")


def server_args():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # Where the parser lives moved twice: the release tables' probe knows every place.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from vllm_release_probe import parser_module

    return parser_module().make_arg_parser(FlexibleArgumentParser()).parse_args([])


def routes(app) -> dict[str, list]:
    from fastapi.params import Form
    from fastapi.routing import APIRoute
    from starlette.routing import WebSocketRoute

    found: dict[str, list] = {}
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            found[route.path] = [["WEBSOCKET"], "none"]
        elif isinstance(route, APIRoute):
            params = route.dependant.body_params
            body = "multipart" if any(isinstance(p.field_info, Form) for p in params) else "json" if params else "none"
            methods, kind = found.get(route.path, [[], "none"])
            found[route.path] = [sorted(set(methods) | route.methods), body if "POST" in route.methods else kind]
    return found


def main() -> None:
    make, args = build_app(), server_args()

    def app(tasks: str):
        try:
            return make(args, tuple(tasks.split(",")))
        except TypeError:                  # before 0.16 build_app(args): every route for every model
            return make(args)

    print(json.dumps({tasks: routes(app(tasks)) for tasks in sys.argv[1:]}))


if __name__ == "__main__":
    main()
