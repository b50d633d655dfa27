"""Dataset-folder output: the Parquet output's table, written as Hugging Face ``save_to_disk`` writes a dataset.

The folder holds Arrow stream files (``data-00000-of-00001.arrow``, a new one past 500 MB), ``state.json``
listing them, and ``dataset_info.json``; ``datasets.load_from_disk(folder)`` reads it (its features are
those of the Arrow schema), and so does infermux itself (``--input_path folder``). ``datasets`` is not needed
to write it: pyarrow writes the files.

Everything else is the Parquet output's (:class:`~infermux.jobs.table_out.ParquetJobFiles`): the columns,
rows recorded in the partial file as they finish (resume, the errors file, the answer cache), and the
assembly in input order at the end, into a temporary folder beside the output that then takes its place
(the earlier folder, if any, is moved aside first and removed after).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from infermux.errors import OutputError
from infermux.jobs.table_out import ParquetJobFiles

__all__ = ["SHARD_BYTES", "DatasetJobFiles", "write_dataset_info"]

#: A new Arrow file starts past this size (``save_to_disk``'s default shard size).
SHARD_BYTES = 500 * 1024 * 1024


class DatasetJobFiles(ParquetJobFiles):
    """:class:`ParquetJobFiles` whose output is a ``save_to_disk`` folder (see the module docstring)."""

    output_is_folder = True

    def check_writable(self) -> None:
        if self.remote is not None:
            raise OutputError(
                f"{self.destination}: a dataset folder is written to a local path; for an object store write "
                "Parquet (an output ending in .parquet)."
            )
        if self.output.is_dir() and not (self.output / "state.json").is_file() and any(self.output.iterdir()):
            raise OutputError(
                f"{self.output}: is a folder that is not a dataset folder (no state.json); a dataset output "
                "replaces its folder, so name a new one."
            )
        super().check_writable()

    def open_writer(self, tmp: Path, schema: Any) -> ArrowFolderWriter:
        return ArrowFolderWriter(tmp, schema, self.fingerprint)

    def install_output(self, tmp: Path) -> None:
        self.install(tmp, self.output)

    @staticmethod
    def install(tmp: Path, output: Path) -> None:
        """Put the folder ``tmp`` in the place of ``output`` (moved aside first, removed after, if there)."""
        old = output.with_name(f".{output.name}.{os.getpid()}.old")
        had = output.exists()
        if had:
            os.replace(output, old)
        os.replace(tmp, output)
        if had:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def discard_output(tmp: Path) -> None:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


class ArrowFolderWriter:
    """Writes tables into a new ``save_to_disk`` folder: Arrow stream shards, then the two JSON files."""

    def __init__(self, folder: Path, schema: Any, fingerprint: str) -> None:
        folder.mkdir()
        self.folder = folder
        self.schema = schema
        self.fingerprint = fingerprint
        self._shards: list[Path] = []
        self._sink: Any = None
        self._writer: Any = None

    def write_table(self, table: Any) -> None:
        import pyarrow as pa

        if self._writer is None or self._sink.tell() > SHARD_BYTES:
            self._close_shard()
            path = self.folder / f"data-{len(self._shards):05d}.arrow"
            self._shards.append(path)
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._writer.write_table(table)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def close(self) -> None:
        import pyarrow as pa

        if not self._shards:  # no rows: one empty shard, so that the folder still has its columns
            self.write_table(pa.table({n: pa.array([], type=self.schema.field(n).type) for n in self.schema.names}))
        self._close_shard()
        names = []
        for number, path in enumerate(self._shards):
            name = f"data-{number:05d}-of-{len(self._shards):05d}.arrow"
            path.rename(self.folder / name)
            names.append(name)
        state: dict[str, Any] = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": hashlib.sha256(f"infermux|{self.fingerprint}|{names}".encode()).hexdigest()[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        write_dataset_info(self.folder)


def write_dataset_info(folder: Path) -> None:
    """``dataset_info.json`` without features: ``datasets`` takes them from the Arrow schema."""
    info = {"builder_name": None, "citation": "", "config_name": None, "description": "", "features": None,
            "homepage": "", "license": ""}  # fmt: skip
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
