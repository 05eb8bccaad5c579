"""Reading ADaM files (CSV, Parquet, SAS XPORT, sas7bdat) into clean pandas frames.

Everything format-specific lives here so the data model sees one shape: upper-case column
names, text decoded from bytes and trimmed (empty text becomes missing), SAS dates as dates.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SUPPORTED_EXTENSIONS = ("csv", "parquet", "xpt", "sas7bdat")
MAX_FILE_BYTES = 1024 * 1024 * 1024  # 1 GiB: beyond this a file is refused with a message
SAS_EPOCH = pd.Timestamp("1960-01-01")


class DataFileError(ValueError):
    """A file could not be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RawFile:
    """A file as received: a name (used to recognise the dataset) and its bytes."""

    name: str
    data: bytes

    @property
    def stem(self) -> str:
        return Path(self.name).name.split(".")[0].lower()

    @property
    def extension(self) -> str:
        parts = Path(self.name).name.lower().split(".")
        return parts[-1] if len(parts) > 1 else ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def raw_files_from_folder(folder: str | os.PathLike) -> list[RawFile]:
    """All candidate data files of a trial folder (plus trial.toml), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(f"{folder}: not a folder")
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower().lstrip(".") in SUPPORTED_EXTENSIONS or path.name == "trial.toml":
            if path.stat().st_size > MAX_FILE_BYTES:
                raise DataFileError(
                    f"{path.name}: {path.stat().st_size / 1e9:.1f} GB is larger than the "
                    f"{MAX_FILE_BYTES / 1e9:.0f} GB limit"
                )
            files.append(RawFile(path.name, path.read_bytes()))
    return files


def unread_data_files(folder: str | os.PathLike) -> list[str]:
    """Files of a trial folder that look like datasets but are not of a type read here (an
    ADSL kept as .xlsx was passed over, and the load said "no ADSL file" without naming it)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in (".xlsx", ".xls", ".sav", ".dta", ".json", ".rds", ".txt", ".tsv")
                  and p.stem.lower().startswith("ad")) if folder.is_dir() else []


def read_table(raw: RawFile) -> pd.DataFrame:
    """Read one data file into a normalised frame (see module docstring)."""
    ext = raw.extension
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataFileError(
            f"{raw.name}: unsupported file type '.{ext}'" if ext else f"{raw.name}: no file extension"
        ) from None
    if len(raw.data) == 0:
        raise DataFileError(f"{raw.name}: the file is empty")
    if len(raw.data) > MAX_FILE_BYTES:
        raise DataFileError(
            f"{raw.name}: {len(raw.data) / 1e9:.1f} GB is larger than the "
            f"{MAX_FILE_BYTES / 1e9:.0f} GB limit"
        )
    labels: dict[str, str] = {}
    try:
        if ext == "csv":
            frame = _read_csv(raw.data)
        elif ext == "parquet":
            frame = pd.read_parquet(io.BytesIO(raw.data))
        else:
            frame, labels = _read_sas(raw)
    except DataFileError:
        raise
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{raw.name}: the file is empty (no columns)") from None
    except Exception as exc:  # noqa: BLE001  # any parser failure becomes one readable message
        kind = {"csv": "CSV", "parquet": "Parquet", "xpt": "SAS transport (XPORT)",
                "sas7bdat": "SAS7BDAT"}[ext]
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataFileError(f"{raw.name}: not a readable {kind} file ({reason})") from None
    names = [str(c).strip().upper() for c in frame.columns]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        same = [str(c) for c in frame.columns if str(c).strip().upper() == clash[0]]
        raise DataFileError(f"{raw.name}: columns {' and '.join(same)} are the same name when case is ignored "
                            "(column names are read case-insensitively): keep one")
    frame = normalise(frame)
    if frame.empty:
        raise DataFileError(f"{raw.name}: the file has no rows")
    frame.attrs["labels"] = {k.upper(): v for k, v in labels.items() if v}
    return frame


def _read_csv(data: bytes) -> pd.DataFrame:
    """A CSV as spreadsheets export them. Text is UTF-8 (with or without a byte-order mark);
    a byte that is not UTF-8 is read as Windows-1252 / Latin-1, byte by byte, so that a Latin-1
    file keeps its accents and a UTF-8 file with one stray byte keeps the rest ("Placébo" read
    with replacement became "Plac\ufffdbo" and lost the control arm: an outside review). The
    separator is the header's most frequent of , ; and tab; with ; or tab a decimal comma is
    read as a number (European exports: "70,5")."""
    text = data.decode("utf-8", errors=_LEGACY_BYTES)
    text = text.removeprefix("\ufeff")
    header = text.split("\n", 1)[0]
    sep = max((",", ";", "\t"), key=header.count)
    frame = pd.read_csv(io.StringIO(text), low_memory=False, sep=sep)
    if sep != ",":
        for col in frame.columns:
            values = frame[col].dropna()
            if frame[col].dtype == object and len(values) and values.astype(str).str.fullmatch(
                    r"-?\d+,\d+|-?\d+").all() and values.astype(str).str.contains(",").any():
                frame[col] = pd.to_numeric(frame[col].str.replace(",", ".", regex=False), errors="coerce")
    return frame


def _legacy_byte(error: UnicodeDecodeError) -> tuple[str, int]:
    """A byte that is not UTF-8, as Windows-1252 (Latin-1 where 1252 leaves it undefined)."""
    bad = error.object[error.start:error.end]
    try:
        return bad.decode("cp1252"), error.end
    except UnicodeDecodeError:
        return bad.decode("latin-1"), error.end


_LEGACY_BYTES = "twinarm-legacy-bytes"
codecs.register_error(_LEGACY_BYTES, _legacy_byte)


def _read_sas(raw: RawFile) -> tuple[pd.DataFrame, dict[str, str]]:
    import pyreadstat

    suffix = "." + raw.extension
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as tmp:
        tmp.write(raw.data)
        tmp_path = tmp.name
    try:
        if raw.extension == "xpt":
            frame, meta = pyreadstat.read_xport(tmp_path)
        else:
            frame, meta = pyreadstat.read_sas7bdat(tmp_path)
        labels = dict(zip(meta.column_names, meta.column_labels or []))
        # pyreadstat converts date-formatted columns; numeric *DT columns without a format
        # are still SAS day numbers.
        for col in frame.columns:
            name = col.upper()
            if name.endswith("DT") and pd.api.types.is_numeric_dtype(frame[col]):
                frame[col] = SAS_EPOCH + pd.to_timedelta(frame[col], unit="D")
            elif name.endswith("DTM") and pd.api.types.is_numeric_dtype(frame[col]):
                frame[col] = SAS_EPOCH + pd.to_timedelta(frame[col], unit="s")
        return frame, labels
    finally:
        os.unlink(tmp_path)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Upper-case names, decode bytes, trim text, empty text -> missing, dates -> datetime."""
    frame = frame.copy()
    frame.columns = [str(c).strip().upper() for c in frame.columns]
    for col in frame.columns:
        series = frame[col]
        if series.dtype == object or pd.api.types.is_string_dtype(series):
            values = series.map(_decode)
            non_null = values.dropna()
            if len(non_null) and non_null.map(lambda v: hasattr(v, "year") and hasattr(v, "month")).all():
                frame[col] = pd.to_datetime(values, errors="coerce")
            elif (col.endswith(("DT", "DTM")) and len(non_null)
                  and non_null.astype(str).str.match(r"^\d{4}-\d{2}-\d{2}([T ][\d:.]+)?$").all()):
                # an ADaM date read from CSV is ISO text: a date, as from XPT or Parquet (a filter
                # TRTSDT >= "2013-01-01" failed on "holds text")
                frame[col] = pd.to_datetime(values, errors="coerce")
            else:
                frame[col] = values.astype(object)
    return frame


def _decode(value):
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    if isinstance(value, str):
        value = value.strip()
        return value if value else np.nan
    return value


def write_table(frame: pd.DataFrame, path: str | os.PathLike, fmt: str = "csv",
                labels: dict[str, str] | None = None) -> Path:
    """Write a frame as CSV, Parquet or SAS XPORT v5 (with variable labels)."""
    path = Path(path)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "xpt":
        import pyreadstat

        out = frame.copy()
        for col in out.columns:
            if out[col].dtype == object:
                out[col] = out[col].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        column_labels = [((labels or {}).get(c) or c)[:40] for c in out.columns]
        pyreadstat.write_xport(out, str(path), table_name=path.stem.upper()[:8],
                               column_labels=column_labels, file_format_version=5)
    else:
        raise ValueError(f"unknown format {fmt!r}; use csv, parquet or xpt")
    return path
