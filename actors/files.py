"""Reading and replacing a user's files safely: lines that name their place when they are not
UTF-8, and outputs that take their file's place whole, or not at all."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def text_lines(path: Path, error: type[Exception]) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file (a byte-order mark is allowed); a line that is not
    UTF-8 raises `error` naming the file, the line and the byte, not a bare UnicodeDecodeError."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise error(_not_utf8(path, lineno, raw, exc.start)) from None
            yield lineno, text


def read_text(path: Path, error: type[Exception]) -> str:
    """A whole UTF-8 file (a byte-order mark is allowed); bytes that are not UTF-8 raise
    `error` naming the file, the line and the byte. A missing file raises FileNotFoundError."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        raise error(_not_utf8(path, data.count(b"\n", 0, start) + 1, data[start:],
                              exc.start - start)) from None


def _not_utf8(path: Path, lineno: int, line: bytes, at: int) -> str:
    return (f"{path}:{lineno}: not UTF-8 text (byte 0x{line[at]:02x} at byte {at + 1} of the "
            f"line); save the file as UTF-8")


@contextmanager
def replaced_on_success(path: Path, error: type[Exception]) -> Iterator[TextIO]:
    """A text file that takes `path`'s place only when the block ends without an error, so a
    bad input or a Ctrl-C halfway leaves the old file as it was. A file that cannot be written
    raises `error` naming it (so the block must not raise OSError for its inputs)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links, '..' or another spelling)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False
