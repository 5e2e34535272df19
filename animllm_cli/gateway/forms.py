"""The model a multipart form names (the audio routes: `model` beside the uploaded file),
and the same form naming another, for the gateway's routing. Parsed by python-multipart
(Starlette's own form parser) over the body already read within the body limit; the form
is relayed as the client sent it, only the model field's value spliced where it is renamed.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from animllm_cli.gateway.guard import Refused, error


@dataclass
class FormFields:
    """The small text fields of a form, by name (files and large parts are not kept), and
    where the model field's value lies in the body."""
    values: dict[str, str]
    model_span: tuple[int, int] | None

    def with_model(self, body: bytes, name: str) -> bytes:
        if self.model_span is None:
            raise Refused(error(400, f"the form's model field cannot be renamed: name the model as {name!r}",
                                param="model"), "bad_form")
        start, end = self.model_span
        return body[:start] + name.encode() + body[end:]


FIELD_LIMIT = 4096  # a text field longer than this is no model name or flag: not kept


def form_fields(body: bytes, content_type: str) -> FormFields:
    """The form's fields; Refused (400) for a form that cannot be read."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refused(error(400, "the multipart form has no boundary in its Content-Type"), "bad_form")
    parts: list[dict] = []
    header: dict[str, bytes] = {}

    def begin() -> None:
        parts.append({"headers": {}, "start": None, "end": None})

    def header_field(data: bytes, start: int, end: int) -> None:
        header["field"] = header.get("field", b"") + data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header["value"] = header.get("value", b"") + data[start:end]

    def header_end() -> None:
        parts[-1]["headers"][header.pop("field", b"").lower()] = header.pop("value", b"")

    def part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part["start"] = start if part["start"] is None else part["start"]
        part["end"] = end
        part["value"] = part.get("value", b"") + data[start:end]  # to check the span against

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": header_field,
                                        "on_header_value": header_value, "on_header_end": header_end,
                                        "on_part_data": part_data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - python-multipart's errors are many; all mean a bad form
        raise Refused(error(400, f"the multipart form cannot be read: {exc}"), "bad_form") from None
    values: dict[str, str] = {}
    model_span = None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode(errors="replace")
        start, end = part["start"] or 0, part["end"] or 0
        if not name or b"filename" in disposition or end - start > FIELD_LIMIT:
            continue
        values[name] = part.get("value", b"").decode(errors="replace")
        if name == "model" and body[start:end] == part.get("value", b""):  # else it cannot be renamed in place
            model_span = (start, end)
    return FormFields(values, model_span)
