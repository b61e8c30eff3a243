"""Streaming readers for manifest sources: yield (file, line, raw text | None) per record.

``None`` marks a record skipped because its bytes were not UTF-8 (``on_decode_error: skip``);
with ``fail`` the same record raises a UserError naming file and line. JSON arrays are parsed
incrementally (one record at a time), so no reader holds a whole file in memory.
"""
from __future__ import annotations

import codecs
import json
import re
from typing import TYPE_CHECKING, Any, Iterator

from zhllama.errors import UserError

if TYPE_CHECKING:
    from .schema import Source

Record = tuple[str, int, "str | None"]
_CHUNK = 1 << 20
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of undecodable bytes


def read_records(source: "Source") -> Iterator[Record]:
    if source.format == "datasets":
        yield from _read_datasets(source)
        return
    for path in source.files:
        file = str(path)
        if source.format == "txt":
            for line, text in _decoded_lines(source, file):
                yield file, line, text
        elif source.format == "jsonl":
            for line, text in _decoded_lines(source, file):
                if text is None or not text.strip():
                    yield file, line, text
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{file}:{line}: not valid JSON ({exc.msg}); source {source.name!r} "
                                    f"of {source.manifest_path} says format: jsonl") from None
                yield file, line, record_text(record, source.text_fields, f"{file}:{line}")
        else:
            yield from _read_json_array(source, file)


def _decode_problem(source: "Source", where: str, exc: UnicodeDecodeError) -> UserError:
    return UserError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start} of the line); "
                     f"set on_decode_error: skip in {source.manifest_path} to skip and count such lines")


def _decoded_lines(source: "Source", file: str) -> Iterator[tuple[int, "str | None"]]:
    with open(file, "rb") as fh:
        for line, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                if source.on_decode_error == "fail":
                    raise _decode_problem(source, f"{file}:{line}", exc) from None
                yield line, None
                continue
            yield line, text.rstrip("\r\n")


def record_text(record: Any, fields: list[str], where: str) -> str:
    """Join a record's text fields with newlines; empty or null fields are skipped."""
    if isinstance(record, str) and fields == ["."]:
        return record
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with fields {fields}, got {type(record).__name__}")
    parts = []
    for field in fields:
        value: Any = record
        for step in field.split("."):
            if isinstance(value, dict) and step in value:
                value = value[step]
            elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
                value = value[int(step)]
            elif value is record:
                raise UserError(f"{where}: record has no field {field!r} (it has: {', '.join(map(str, record))})")
            else:
                value = None
                break
        if value is None:
            continue
        if not isinstance(value, str):
            raise UserError(f"{where}: field {field!r} is {type(value).__name__}, expected text")
        if value.strip():
            parts.append(value)
    return "\n".join(parts)


def _read_json_array(source: "Source", file: str) -> Iterator[Record]:
    """Yield the items of a top-level JSON array one at a time, with the line each starts on."""
    errors = "strict" if source.on_decode_error == "fail" else "surrogateescape"
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors=errors)
    parser = json.JSONDecoder()
    buf, pos, line, eof, started, index = "", 0, 1, False, False, 0
    with open(file, "rb") as fh:

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            chunk = fh.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise _decode_problem(source, f"{file}:{line + buf.count(chr(10), pos)}+", exc) from None
            eof = not chunk
            buf = buf[pos:] + text
            pos = 0
            return True

        def skip_ws() -> str:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not more():
                    return buf[pos] if pos < len(buf) else ""

        if skip_ws() != "[":
            raise UserError(f"{file}:{line}: expected a JSON array of records (format: json); "
                            f"use format: jsonl for one record per line")
        pos += 1
        while True:
            ch = skip_ws()
            if ch == "]":
                return
            if started:
                if ch != ",":
                    raise UserError(f"{file}:{line}: expected ',' or ']' between array items")
                pos += 1
                ch = skip_ws()
            if ch == "":
                raise UserError(f"{file}:{line}: the JSON array is not closed")
            while True:
                try:
                    record, end = parser.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if not more():
                        raise UserError(f"{file}:{line}: not valid JSON ({exc.msg})") from None
            started, index = True, index + 1
            text = record_text(record, source.text_fields, f"{file}:{line} (item {index})")
            if errors != "strict" and _ESCAPED.search(text):
                text = None  # undecodable bytes under on_decode_error: skip
            yield file, line, text
            line += buf.count("\n", pos, end)
            pos = end


def _read_datasets(source: "Source") -> Iterator[Record]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise UserError(f"source {source.name!r} needs the datasets package: pip install datasets") from exc
    loc = source.location
    if "hf_disk" in loc:
        folder = str(source.base_dir / loc["hf_disk"])
        ds = datasets.load_from_disk(folder)
        label = folder
        if isinstance(ds, datasets.DatasetDict):
            split = loc.get("hf_split")
            if split not in ds:
                raise UserError(f"{source.manifest_path}: source {source.name!r}: hf_split must name one of "
                                f"{sorted(ds)} of {folder}, got {split!r}")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(loc["hf_hub"], loc.get("hf_config"), split=loc.get("hf_split") or "train",
                                   revision=loc["hf_revision"], streaming=True)
        label = f"hf:{loc['hf_hub']}"
    for row, record in enumerate(ds, 1):
        yield label, row, record_text(record, source.text_fields, f"{label} row {row}")
