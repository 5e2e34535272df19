"""`animllm pull`: download models' weights into the Hugging Face cache the engine reads."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from animllm_cli.cli import common

INTERRUPTED = 130


def pull(
    ctx: typer.Context,
    models: Annotated[Optional[list[str]], typer.Argument(
        help="Models to pull (default: every model that runs here and is not in the cache yet).",
        metavar="MODEL", show_default=False, autocompletion=common.complete_models)] = None,
    revision: Annotated[Optional[str], typer.Option(
        "--revision", metavar="REV", show_default=False,
        help="Branch, tag or commit to pull instead of the model's `revision` (one model only).")] = None,
    json_output: common.JsonOption = False,
    config: common.ConfigOption = None,
) -> None:
    """Download models into the Hugging Face cache, with progress.

    A progress bar per file and an overall one.

    Resumable: after Ctrl-C (exit 130) the next pull goes on where it stopped. Honours the
    model's revision, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE as the engine would. Exit 0
    when every model is present, 1 when one could not be pulled, 2 for a usage error.
    """
    from animllm_cli.errors import UsageError
    from animllm_cli.pull import pull_models
    from animllm_cli.pull.models import default_targets

    out = common.output(ctx)
    loaded = common.load(ctx, config)
    names = list(dict.fromkeys(loaded.catalogue.resolve(m) for m in models)) if models else default_targets(loaded)
    if revision and len(names) != 1:
        raise UsageError("--revision applies to one model: name exactly one",
                         hint="animllm pull coder --revision v1.1")
    if not names and not json_output:
        out.info("every model that runs here is in the Hugging Face cache: nothing to pull")
    try:
        with out.downloads() as downloads:
            report = pull_models(loaded, names, revision=revision, progress=DrawnProgress(downloads))
    except KeyboardInterrupt:
        out.error("interrupted: any partial file is kept in the cache", "run the same `animllm pull` again to resume")
        raise typer.Exit(INTERRUPTED) from None
    out.result(report, lambda r: _show(out, r), json=json_output)
    for failed in (m for m in report.models if m.status == "failed"):
        out.error(failed.error or f"{failed.model}: failed", failed.hint)
    raise typer.Exit(report.exit_code)


def pull_missing(out, loaded, names: list[str]) -> None:
    """For `serve` and `switch`: download the models about to load that the cache lacks, as
    `animllm pull` does, so that the engine's start phases begin after the download rather
    than during it (with no progress but its log's)."""
    from animllm_cli.pull import ensure_present

    try:
        with out.downloads() as downloads:
            ensure_present(loaded, names, progress=DrawnProgress(downloads), warn=out.warn)
    except KeyboardInterrupt:
        out.error("interrupted while pulling: any partial file is kept in the cache",
                  "`animllm pull` resumes it (so do the next `serve` and `switch`)")
        raise typer.Exit(INTERRUPTED) from None


class DrawnProgress:
    """A pull's progress (animllm_cli.pull.PullProgress) drawn by `Output.downloads()`;
    `serve` draws its pulls with it too."""

    def __init__(self, downloads: Any) -> None:
        self.downloads = downloads

    def model_started(self, pull, missing) -> None:
        total = sum(f.size or 0 for f in missing)
        self.downloads.overall(f"{pull.model} ({pull.source}, {len(missing)} file{'s' * (len(missing) != 1)})", total)

    def file_started(self, model: str, file, resume_from: int) -> None:
        self.downloads.file_started(file.path, file.size, resume_from)

    def file_position(self, model: str, file, on_disk: int) -> None:
        self.downloads.file_position(file.path, on_disk)

    def file_finished(self, model: str, file) -> None:
        resumed = f", resumed at {human_bytes(file.resumed_from)}" if file.resumed_from else ""
        self.downloads.file_finished(file.path, f"{model}: {file.path} {human_bytes(file.size)}{resumed}")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "? B"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _show(out, report) -> None:
    """One row per model, narrow enough for 80 columns (the source, which can be long,
    last and folded); notes below the table."""
    from animllm_cli.output import styled, table

    rows = [[m.model, m.status, len(m.files), human_bytes(m.downloaded_bytes),
             human_bytes(m.total_bytes) if m.files else "-", _where(m)] for m in report.models]
    if rows:
        out.show(table(None, ["model", "status", "files", "downloaded", "size", "source @ revision"], rows,
                       no_wrap=("model", "status", "files", "downloaded", "size")))
    for m in report.models:
        if m.note:
            out.info(f"{m.model}: {m.note}")
    offline = ", offline" if report.hub.offline else ""
    out.info(styled(f"cache {report.hub.cache_dir}, hub {report.hub.endpoint}{offline}", "dim"))


def _where(pull) -> str:
    if pull.status in ("local", "remote") or not pull.revision:
        return pull.source
    commit = f" ({pull.commit[:12]})" if pull.commit and pull.commit != pull.revision else ""
    return f"{pull.source} @ {pull.revision}{commit}"
