"""`animllm keys`: the keys of the gateway's clients (`clients:` in the config). A key is
printed once, when it is made, and kept only as a hash; a revoked key is refused by a
running gateway at once."""

from __future__ import annotations

from typing import Annotated

import typer

from animllm_cli.cli import common
from animllm_cli.cli.help import Command

app = typer.Typer(no_args_is_help=True, help="Make, list and revoke the keys of the gateway's clients.")
ClientArgument = Annotated[str, typer.Argument(metavar="CLIENT", help="A client named under `clients:` in the config.",
                                               show_default=False)]


@app.command("create", cls=Command)
def create(ctx: typer.Context, client: ClientArgument, config: common.ConfigOption = None,
           json_output: common.JsonOption = False) -> None:
    """Make a key for CLIENT and print it, once: it is kept only as a hash.

    Give it to the tool or person as its API key (Authorization: Bearer, x-api-key, OLLAMA_API_KEY)."""
    from animllm_cli.access.keys import KeyStore
    from animllm_cli.errors import UsageError

    out = common.output(ctx)
    clients = common.load(ctx, config).config.clients
    if client not in clients:
        raise UsageError(f"no client named '{client}' in the config",
                         hint=f"clients: {', '.join(clients) or '(none: add a clients: section first)'}")
    record, key = KeyStore().create(client)
    out.result({**record.to_json(), "key": key}, lambda r: _show_created(out, r), json=json_output)


def _show_created(out, made: dict) -> None:
    out.text(made["key"])
    out.info(f"key {made['id']} for client '{made['client']}': shown this once, kept only as a hash "
             f"(`animllm keys revoke {made['id']}` ends it)")


@app.command("list", cls=Command)
def list_keys(ctx: typer.Context, config: common.ConfigOption = None, json_output: common.JsonOption = False) -> None:
    """The clients in the config, and the keys made for them (their ids, never the keys)."""
    from animllm_cli.access.keys import KeyStore

    out = common.output(ctx)
    loaded = common.load(ctx, config)
    records = KeyStore().records()
    report = {"clients": [{"name": name, "api_key_env": spec.api_key_env, "models": spec.models or None,
                           "priority": spec.priority, "admin": spec.admin,
                           "keys": [r.to_json() for r in records if r.client == name]}
                          for name, spec in loaded.config.clients.items()]}
    out.result(report, lambda r: _show_list(out, r), json=json_output)


def _show_list(out, report: dict) -> None:
    from datetime import datetime

    from animllm_cli.output import table

    def when(t: float | None) -> str:
        return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"

    rows = [[c["name"], c["api_key_env"] or "-", ", ".join(c["models"] or ["all"]), f"{c['priority']:g}",
             "yes" if c["admin"] else "-",
             "\n".join(f"{k['id']} {when(k['created'])}" + (f" revoked {when(k['revoked'])}" if k["revoked"] else "")
                       for k in c["keys"]) or "-"] for c in report["clients"]]
    out.show(table("Clients", ["client", "key variable", "models", "priority", "admin", "keys (id, made)"], rows))


@app.command("revoke", cls=Command)
def revoke(ctx: typer.Context,
           wanted: Annotated[str, typer.Argument(metavar="ID|CLIENT", help="A key's id, or a client (all its keys).",
                                                 show_default=False)],
           json_output: common.JsonOption = False) -> None:
    """Revoke a key (or every key of a client): a running gateway refuses it at once."""
    from animllm_cli.access.keys import KeyStore

    out = common.output(ctx)
    revoked = KeyStore().revoke(wanted)
    out.result({"revoked": [r.to_json() for r in revoked]},
               lambda r: out.info(f"revoked {', '.join(k['id'] + ' (' + k['client'] + ')' for k in r['revoked'])}"),
               json=json_output)
