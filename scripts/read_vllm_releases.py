"""Write animllm_cli/engine/vllm_releases.json: what each vLLM release from 0.9.0 on
accepts on its server's command line, read from that release's own source.

For each release on the package index (final releases only), the source distribution
(or, where a release has none, its wheel) is downloaded and its `vllm/` package
unpacked; scripts/vllm_release_probe.py then builds that release's own argument parser
in a subprocess and lists every option, the quantization methods, the environment
variables and the server modules. The table keeps each fact with the releases that have
it, so that one file holds every release.

  .venv/bin/python scripts/read_vllm_releases.py                 # every release from 0.9.0
  .venv/bin/python scripts/read_vllm_releases.py --releases 0.10.0,0.33.0 --out /tmp/t.json

The interpreter (--python, default this one) needs some vLLM installed, for its
dependencies (torch, transformers, pydantic): the release read is imported over it.
Downloads are kept under the user cache dir; a rerun reads them from there.

Why PyPI and not the git tags: a release's source distribution is its tag's tree, and
PyPI (or the configured mirror, --index) is reachable where GitHub may not be.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import httpx
import platformdirs
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "animllm_cli" / "engine" / "vllm_releases.json"
PROBE = Path(__file__).resolve().with_name("vllm_release_probe.py")
FIRST = Version("0.9.0")
INDEX = "https://pypi.org/pypi/vllm/json"


def release_files(index: str, first: Version) -> dict[str, dict]:
    """Each final release from `first` on: its source distribution, else its wheel."""
    response = httpx.get(index, timeout=60, follow_redirects=True)
    response.raise_for_status()
    found = {}
    for version, files in response.json()["releases"].items():
        parsed = Version(version)
        if parsed < first or parsed.is_prerelease or parsed.is_devrelease:
            continue
        files = [f for f in files if not f.get("yanked")]
        chosen = next((f for f in files if f["packagetype"] == "sdist"), None) or \
            next((f for f in files if f["filename"].endswith(".whl") and "x86_64" in f["filename"]), None)
        if chosen:
            found[version] = {**chosen, "url": urljoin(str(response.url), chosen["url"])}
    return dict(sorted(found.items(), key=lambda item: Version(item[0])))


def source_tree(version: str, file: dict, cache: Path) -> Path:
    """The release's `vllm/` Python sources, unpacked once into the cache."""
    tree = cache / f"vllm-{version}"
    if (tree / "vllm" / "__init__.py").is_file():
        return tree
    archive = cache / file["filename"]
    if not archive.is_file():
        with httpx.stream("GET", file["url"], timeout=600, follow_redirects=True) as response:
            response.raise_for_status()
            partial = archive.with_suffix(".part")
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
            partial.replace(archive)
    staging = cache / f"vllm-{version}.part"
    staging.mkdir(parents=True, exist_ok=True)
    for name, data in python_members(archive):
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    staging.replace(tree)
    archive.unlink()  # the unpacked sources are what a rerun needs
    return tree


def python_members(archive: Path):
    """(path under the tree, bytes) for each file of the `vllm` package in a sdist or wheel."""
    def wanted(name: str) -> str | None:
        parts = name.split("/")
        if archive.name.endswith(".tar.gz"):
            parts = parts[1:]  # vllm-X.Y.Z/vllm/...
        return "/".join(parts) if parts and parts[0] == "vllm" and not name.endswith("/") else None

    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as wheel:
            for name in wheel.namelist():
                if (path := wanted(name)) and not name.endswith((".so", ".cubin")):
                    yield path, wheel.read(name)
        return
    with tarfile.open(archive) as sdist:
        for member in sdist:
            if member.isfile() and (path := wanted(member.name)):
                yield path, sdist.extractfile(member).read()


MISSING_EXIT = 3  # the probe's: a third-party package it should stand in for


def probe(python: str, tree: Path) -> dict:
    """The probe's table, run again with a stand-in for each missing package it names."""
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "VLLM_PLUGINS": "", "TOKENIZERS_PARALLELISM": "false"}
    stubs: list[str] = []
    while len(stubs) < 30:
        result = subprocess.run([python, str(PROBE), str(tree), ",".join(stubs)], capture_output=True, text=True,
                                env=env, timeout=900)
        lines = result.stdout.strip().splitlines()
        if result.returncode == MISSING_EXIT and lines:
            stubs.append(json.loads(lines[-1])["missing"])
            continue
        if result.returncode != 0 or not lines:
            raise RuntimeError(result.stderr.strip()[-2000:] or f"exit {result.returncode}")
        return json.loads(lines[-1])
    raise RuntimeError(f"still failing with stand-ins for {', '.join(stubs)}")


def spans(indices: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 2], [5, 6]]: the runs of releases that have a fact."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return runs


def compact(tables: dict[str, dict]) -> dict:
    """One file for every release: each option (with its exact form), quantization method
    and variable is kept once, with the runs of release indices that have it."""
    releases = list(tables)
    options: dict[str, dict[str, list[int]]] = {}
    names: dict[str, dict[str, list[int]]] = {"quantization": {}, "env": {}}
    modules: dict[str, dict[str, list[int]]] = {}
    for index, table in enumerate(tables.values()):
        for option, spec in table["options"].items():
            options.setdefault(option, {}).setdefault(json.dumps(spec, sort_keys=True), []).append(index)
        for kind in names:
            for name in table[kind]:
                names[kind].setdefault(name, []).append(index)
        for module, spec in table["server_modules"].items():
            modules.setdefault(module, {}).setdefault(json.dumps(spec, sort_keys=True), []).append(index)
    return {
        "about": "what each vLLM release's server accepts, read from its own source by scripts/read_vllm_releases.py; "
                 "do not edit by hand. Each fact lists the runs [first, last] of indices into `releases` that have it.",
        "releases": releases,
        "options": {option: [{"spec": json.loads(spec), "releases": spans(idx)} for spec, idx in forms.items()]
                    for option, forms in sorted(options.items())},
        "quantization": {name: spans(idx) for name, idx in sorted(names["quantization"].items())},
        "env": {name: spans(idx) for name, idx in sorted(names["env"].items())},
        "server_modules": {module: [{"spec": json.loads(spec), "releases": spans(idx)} for spec, idx in forms.items()]
                           for module, forms in sorted(modules.items())},
        # Packages a release imports that the reading interpreter lacked: empty stand-ins were imported instead.
        "stubbed": {version: table["stubbed"] for version, table in tables.items() if table.get("stubbed")},
    }


def dump(table: dict) -> str:
    """JSON with one line per fact (an option with all its forms, a method, a variable; an
    item of a list of objects, such as a route), so that a regeneration's diff reads as what
    changed between releases."""
    def line(value) -> str:
        return json.dumps(value, separators=(",", ":"))

    parts = []
    for key, value in table.items():
        if isinstance(value, dict) and value:
            rows = ",\n".join(f"  {line(k)}: {line(v)}" for k, v in value.items())
            parts.append(f" {line(key)}: {{\n{rows}\n }}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows = ",\n".join(f"  {line(v)}" for v in value)
            parts.append(f" {line(key)}: [\n{rows}\n ]")
        else:
            parts.append(f" {line(key)}: {line(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default=INDEX, help="the package index's JSON for vllm (default: PyPI)")
    parser.add_argument("--releases", help="comma-separated releases (default: every final release from 0.9.0)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with some vLLM installed")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--jobs", type=int, default=2, help="releases probed at once")
    args = parser.parse_args()
    cache = Path(platformdirs.user_cache_dir("animllm")) / "vllm-sources"
    cache.mkdir(parents=True, exist_ok=True)
    files = release_files(args.index, FIRST)
    if args.releases:
        wanted = args.releases.split(",")
        missing = [v for v in wanted if v not in files]
        if missing:
            sys.exit(f"not on the index (or before {FIRST}): {', '.join(missing)}")
        files = {v: files[v] for v in sorted(wanted, key=Version)}

    def read(version: str) -> tuple[str, dict | str]:
        try:
            table = probe(args.python, source_tree(version, files[version], cache))
        except Exception as exc:  # reported with its release; the others still count
            return version, f"{type(exc).__name__}: {exc}"
        print(f"read {version}: {len(table['options'])} options, {len(table['quantization'])} quantization methods, "
              f"{len(table['env'])} variables", file=sys.stderr, flush=True)
        return version, table

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(read, files))
    failed = {v: r for v, r in results.items() if isinstance(r, str)}
    for version, error in failed.items():
        print(f"FAILED {version}: {error}", file=sys.stderr)
    if failed:
        sys.exit(f"{len(failed)} release(s) could not be read; the table was not written")
    args.out.write_text(dump(compact(results)))
    print(f"wrote {args.out}: {len(results)} releases, {', '.join(results)}", file=sys.stderr)


if __name__ == "__main__":
    main()
