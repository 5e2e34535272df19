"""Images for vision models, checked before anything is sent: present, readable, really an
image (by its first bytes, not its name), not too big; sent as a data URL content part."""

from __future__ import annotations

import base64
from pathlib import Path

from animllm_cli.errors import UsageError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
SIGNATURES = [(b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
              (b"GIF89a", "image/gif"), (b"BM", "image/bmp")]


def sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in SIGNATURES if head.startswith(magic)), None)


def image_part(path_text: str, max_bytes: int = MAX_IMAGE_BYTES) -> dict:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise UsageError(f"image not found: {path}")
    if not path.is_file():
        raise UsageError(f"not a file: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise UsageError(f"image too large: {path} is {size / 2**20:.1f} MiB, the limit is {max_bytes / 2**20:.0f} MiB",
                         hint="scale it down first")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image {path}: {exc.strerror}") from None
    mime = sniff(data[:16])
    if mime is None:
        raise UsageError(f"not an image (PNG, JPEG, GIF, WebP or BMP): {path}")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}
