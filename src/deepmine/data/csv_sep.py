"""The delimiter of a CSV file: `data.sep` (auto | , | ; | tab).

Many public data-mining tables are not comma-separated: UCI's wine quality, and most tables
exported by a spreadsheet in a locale whose decimal mark is a comma, use `;`. Read with the
wrong delimiter, such a table is one column whose name is the whole header line, and every
later message ("data.target names column(s) 'quality' that ... does not have") points away
from the cause. So:

- `auto` (the default) guesses the delimiter from the head of the file (`csv.Sniffer` on the
  first `SAMPLE_BYTES`, restricted to the delimiters deepmine knows) and pandas' C parser then
  reads the whole file with it: the guess costs one small read however large the file is, and
  the read stays as fast as a plain `read_csv` (pandas' own `sep=None` would switch to its
  slow Python engine for the whole file);
- an explicit delimiter that does not split the header line while another one does is refused
  in one line naming the delimiter to use, before anything else reads the table.

The delimiter used is recorded with the run (`deepmine.data.csv.sep`), since with `auto` the
config alone does not say it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from deepmine.errors import DeepmineError

#: the delimiters deepmine reads, as given in a config (a tab as the two characters \t too)
DELIMITERS = (",", ";", "\t")
CHOICES = ("auto", *DELIMITERS)
#: how a delimiter is named in messages and tags (a tab is invisible)
NAMES = {",": ",", ";": ";", "\t": "\\t"}
#: the run tag naming the delimiter read with (`deepmine train` adds it: `read_tags`)
TAG = "deepmine.data.csv.sep"
#: bytes of the file's head the guess reads: many rows of any real table
SAMPLE_BYTES = 64 * 1024
#: what a command line gives for a tab: Hydra keeps `'\t'` as backslash and t
_TAB_SPELLINGS = ("\\t", "tab")


def checked(sep: str) -> str:
    """`data.sep` as a delimiter or `auto`; anything else stops the run before reading."""
    value = "\t" if sep in _TAB_SPELLINGS else sep
    if value not in CHOICES:
        raise DeepmineError(
            f"data.sep={sep!r} is not one of auto, ',', ';', '\\t'",
            "e.g. data.sep=auto (guessed from the file's head)",
        )
    return value


def resolved(path: Path, sep: str) -> str:
    """The delimiter to read `path` with: `sep`, or the guess from its head under `auto`.
    An explicit `sep` that the header line does not contain, while it contains another
    delimiter, is a mistake: the table would read as one column."""
    sep = checked(sep)
    head = _head(path)
    if sep == "auto":
        return guess(head)
    header = head.splitlines()[0] if head else ""
    if sep not in header:
        found = [d for d in DELIMITERS if d != sep and d in header]
        if found:
            other = max(found, key=header.count)
            raise DeepmineError(
                f"{path} read with data.sep='{NAMES[sep]}' is a single column named "
                f"{header[:60]!r}: its header is separated by '{NAMES[other]}'",
                f"e.g. data.sep='{NAMES[other]}' (or data.sep=auto)",
            )
    return sep


def guess(head: str) -> str:
    """The delimiter of a CSV whose first bytes are `head`: what `csv.Sniffer` finds among
    `DELIMITERS`, checked against the header line; else the delimiter the header line holds
    most often; a comma when it holds none (a one-column table)."""
    lines = head.splitlines()
    if len(head) >= SAMPLE_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the sample's last line is cut short
    header = lines[0] if lines else ""
    try:
        found = csv.Sniffer().sniff("\n".join(lines), delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        found = None
    if found and found in header:
        return found
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def guess_file(path: Path) -> str:
    """The delimiter `data.sep=auto` would read `path` with (what scoring new rows uses)."""
    return guess(_head(path))


def tags(delimiter: str) -> dict[str, str]:
    """The run tag naming the delimiter a CSV was read with (a tab as \\t)."""
    return {TAG: NAMES[delimiter]}


def _head(path: Path) -> str:
    """The first `SAMPLE_BYTES` of the file as text (bad bytes replaced: only the
    delimiters matter here; the read itself reports an undecodable file)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
            return handle.read(SAMPLE_BYTES)
    except OSError:
        return ""
