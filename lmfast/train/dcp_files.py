"""The files of a sharded (``.dcp``) checkpoint, read without running code and checked by content before use.

``torch.distributed.checkpoint`` (DCP) keeps a checkpoint as a directory: ``.metadata`` (a pickle of its own record
types: which tensor lies where), one or more ``__{rank}_{i}.distcp`` files of tensor bytes and of small values saved
with ``torch.save``, and lmfast's ``run_state.pt``. Two of DCP's readers would run code from such a directory:
``FileSystemReader.read_metadata`` calls plain ``pickle.load`` on ``.metadata``, and the default planner loads the
small values with ``torch.load(weights_only=False)``. So lmfast reads them with :func:`safe_reader`, whose unpickler
builds only DCP's metadata records (:data:`_METADATA_GLOBALS`; anything else, ``os.system`` included, is refused
before it is called), and :func:`safe_planner`, which loads the small values with ``weights_only=True``.

Every file is also checked by content before it is read: the writer records each file's size and CRC-32 in
``run_state.pt`` (:func:`file_sums`), which is itself saved with lmfast's checkpoint checksums, and
:func:`verify_files` recomputes them. A flipped bit, a truncated, deleted or replaced shard, or a garbage
``.metadata`` is refused with one error naming the file, before DCP sees it. Under torchrun each rank checks the
small ``.metadata`` and its share of the shards (every ``world_size``-th file), and the ranks agree on the outcome.
Cost: one read of the files at zlib's CRC-32 speed (about 1.3 GB/s on one core of the 2-core test machine).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from lmfast.data.cache import file_crc32

__all__ = ["safe_reader", "safe_planner", "file_sums", "verify_files", "read_metadata", "FILES_KEY"]

FILES_KEY = "files"  # the run_state.pt key holding {file name: [size, crc32]}

# What a DCP .metadata pickle may name: DCP's own record types, torch.Size, dtypes and layouts, a path
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
     ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that can build DCP's metadata and nothing else: every other global is refused, so a crafted
    ``.metadata`` cannot call ``os.system`` (or anything) while it is read."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) not in _METADATA_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not one of DCP's metadata types")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent id, which DCP's metadata never does")


def read_metadata(path: Path) -> Any:
    """The ``Metadata`` in ``path`` (a ``.metadata`` file), unpickled without running code; ValueError if it is not
    DCP metadata."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure: truncated, garbage, or a refused global
        raise ValueError(f"sharded checkpoint file {str(path)!r} cannot be read as DCP metadata ({type(e).__name__}: "
                         f"{str(e)[:200]}); it is corrupt or was not written by torch.distributed.checkpoint, so "
                         "resume from another checkpoint") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"sharded checkpoint file {str(path)!r} holds a {type(metadata).__name__}, not DCP metadata; "
                         "resume from another checkpoint")
    return metadata


def safe_reader(path: Path, checked: set[str] | None):
    """A DCP ``FileSystemReader`` of ``path`` that runs no code from it: its metadata comes from
    :func:`read_metadata`, and its storage entries may name only the files in ``checked`` (None: any plain file name
    in the directory, for a checkpoint from before the checksums)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            metadata = read_metadata(Path(path) / ".metadata")
            for info in (metadata.storage_data or {}).values():
                name = getattr(info, "relative_path", None)
                if not isinstance(name, str) or Path(name).name != name or (checked is not None and
                                                                              name not in checked):
                    raise ValueError(f"sharded checkpoint {str(path)!r}: its .metadata points at {name!r}, which is "
                                     "not one of its checked files; resume from another checkpoint")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def safe_planner():
    """DCP's default load planner, except that the small non-tensor values load with ``weights_only=True``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafePlanner()


# -- checksums ------------------------------------------------------------------------------------------------


def file_sums(directory: Path, names: list[str]) -> dict[str, list[int]]:
    """``{name: [size, crc32]}`` of the files ``names`` in ``directory``."""
    return {name: [(directory / name).stat().st_size, file_crc32(directory / name)] for name in names}


def verify_files(path: Path, sums: Any, rank: int = 0, world_size: int = 1) -> set[str]:
    """Check a sharded checkpoint's files against ``sums`` (from its run state); returns the checked names.

    Every rank checks that each file exists with its size and that ``.metadata`` has its CRC; the shards' CRCs are
    split over the ranks (rank r checks every world_size-th file from the r-th). ValueError names the first file that
    differs.
    """
    fix = "resume from another checkpoint (--resume PATH, or move this one away for --resume auto)"
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2
                                             and all(isinstance(x, int) for x in v) for k, v in sums.items()):
        raise ValueError(f"sharded checkpoint {str(path)!r}: run_state.pt's '{FILES_KEY}' is not a table of file "
                         f"sizes and checksums; {fix}")
    if ".metadata" not in sums:
        raise ValueError(f"sharded checkpoint {str(path)!r}: run_state.pt lists no .metadata; {fix}")
    names = sorted(sums)
    for name in names:
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise ValueError(f"sharded checkpoint {str(path)!r} lacks {name}, which was written with it (deleted or "
                             f"never copied); {fix}")
        if file.stat().st_size != sums[name][0]:
            raise ValueError(f"sharded checkpoint {str(path)!r}: {name} has {file.stat().st_size:,} bytes but was "
                             f"written with {sums[name][0]:,} (truncated or replaced); {fix}")
    shards = [n for n in names if n != ".metadata"]
    for name in [".metadata", *shards[rank::world_size]]:
        if file_crc32(path / name) != sums[name][1]:
            raise ValueError(f"sharded checkpoint {str(path)!r} is corrupt: {name} differs from the checksum saved "
                             f"with it (a changed byte on disk or in a copy); {fix}, or copy it again")
    return set(names)
