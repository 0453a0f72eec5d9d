"""Parquet and CSV inputs: one file or a directory of part files, read in record batches."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")


def table_format(path: Path) -> str | None:
    """``parquet`` or ``csv`` from a file name, or None."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def part_files(path: Path, what: str, option: str, fmt: str | None = None) -> tuple[list[Path], str]:
    """The files behind ``path`` (itself, or a directory's part files in name order) and their format."""
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.is_file() and table_format(p) and (fmt is None or table_format(p) == fmt))
        if not parts:
            raise InputError(f"{what} directory {path} holds no .parquet or .csv part files; check the path given to {option}")
        fmts = {table_format(p) for p in parts}
        if len(fmts) > 1:
            raise InputError(f"{what} directory {path} mixes Parquet and CSV part files; keep one format per directory")
        return parts, fmts.pop()
    f = fmt or table_format(path)
    if f is None:
        raise InputError(f"cannot tell the format of {what} file {path} from its name; pass the format option (npy, parquet or csv)")
    return [path], f


class TableReader:
    """Read named columns of Parquet/CSV part files as numpy record batches.

    ``columns`` are names, or all-digit strings meaning 0-based positions in a
    CSV without a header row.
    """

    def __init__(self, files: list[Path], fmt: str, columns: list[str], what: str, option: str,
                 csv_delimiter: str = ","):
        self.files = files
        self.fmt = fmt
        self.what = what
        self.option = option
        self.delimiter = "\t" if files[0].name.lower().endswith(".tsv") else csv_delimiter
        self.positional = fmt == "csv" and all(c.isdigit() for c in columns)
        self.columns = [f"f{c}" for c in columns] if self.positional else list(columns)
        self.user_columns = list(columns)
        self.num_rows = self._count_rows() if fmt == "parquet" else None
        for f in files:
            self._check_columns(f)

    def _names(self, f: Path) -> list[str]:
        if self.fmt == "parquet":
            try:
                return pq.ParquetFile(f).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as e:
                raise InputError(f"{self.what} file {f} is not a readable Parquet file ({str(e).splitlines()[0]}); re-create it") from None
        reader = self._open_csv(f, None)
        return reader.schema.names

    def _check_columns(self, f: Path) -> None:
        names = self._names(f)
        for c, user in zip(self.columns, self.user_columns):
            if c not in names:
                shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
                raise InputError(
                    f"{self.what} file {f} has no column {user!r} (it has: {shown}); name the right column with {self.option}"
                )
        if self.fmt == "parquet":
            schema = pq.ParquetFile(f).schema_arrow
            for c in self.columns:
                t = schema.field(c).type
                if not self._type_ok(t):
                    raise InputError(f"column {c!r} of {self.what} file {f} has type {t}; {self._type_hint()}")

    def _type_ok(self, t: pa.DataType) -> bool:
        return pa.types.is_integer(t)

    def _type_hint(self) -> str:
        return "node ids must be integers (int32 or int64); convert the column"

    def _count_rows(self) -> int:
        total = 0
        for f in self.files:
            try:
                total += pq.ParquetFile(f).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as e:
                raise InputError(f"{self.what} file {f} is not a readable Parquet file ({str(e).splitlines()[0]}); re-create it") from None
        return total

    def _open_csv(self, f: Path, column_types: dict | None):
        read = pacsv.ReadOptions(block_size=16 << 20, autogenerate_column_names=self.positional)
        parse = pacsv.ParseOptions(delimiter=self.delimiter)
        convert = pacsv.ConvertOptions(include_columns=self.columns if column_types else None,
                                       column_types=column_types)
        try:
            return pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as e:
            raise InputError(f"{self.what} file {f} cannot be read as CSV ({str(e).splitlines()[0]}); fix the file") from None

    def batches(self, batch_rows: int, column_type: pa.DataType = pa.int64()):
        """Yield ``(file, [numpy column, ...])`` batches of at most ``batch_rows`` rows."""
        for f in self.files:
            if self.fmt == "parquet":
                it = pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=self.columns)
            else:
                it = self._open_csv(f, {c: column_type for c in self.columns})
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except pa.ArrowInvalid as e:
                    raise InputError(
                        f"{self.what} file {f} holds a value that is not {column_type} ({str(e).splitlines()[0]}); {self._type_hint()}"
                    ) from None
                cols = []
                for c in self.columns:
                    col = batch.column(batch.schema.get_field_index(c))
                    if col.null_count:
                        raise InputError(f"column {c!r} of {self.what} file {f} has {col.null_count} empty values; fill or drop those rows")
                    cols.append(col.to_numpy(zero_copy_only=False))
                yield f, cols
