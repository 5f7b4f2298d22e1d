"""One reader for the project's CSV files (split CSVs of a source, split files of a folder tree)."""

from __future__ import annotations

import csv
from pathlib import Path

from fopro_edge.errors import DataError


def read_csv_table(path: Path, what: str, header_example: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line number, fields)`` of every non-empty row, fields stripped.

    UTF-8 (a byte-order mark is allowed); the delimiter is the most frequent of comma, semicolon and
    tab on the first line. ``what`` names the file in errors ("CSV file", "split file").
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            delimiter = max(",;\t", key=f.readline().count)
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter)
            header = next((r for r in reader if any(c.strip() for c in r)), None)
            if header is None:
                raise DataError(f"{path}: the {what} is empty (expected a header row, e.g. {header_example})")
            header = [h.strip() for h in header]
            rows = []
            for r in reader:
                if not any(c.strip() for c in r):
                    continue
                if len(r) != len(header):
                    raise DataError(f"{path}: line {reader.line_num} has {len(r)} fields, the header has {len(header)}")
                rows.append((reader.line_num, [c.strip() for c in r]))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text CSV ({e.reason}); save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: the {what} has a header but no rows")
    return header, rows


def require_values(path: Path, line: int, row: list[str], header: list[str], columns: tuple[int, ...]) -> None:
    """A one-line error when any of ``columns`` is empty on this row."""
    if not all(row[i] for i in columns):
        names = " or ".join(f"'{header[i]}'" for i in columns)
        raise DataError(f"{path}: line {line}: empty {names} value")
