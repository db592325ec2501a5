"""Where a :class:`~simgen.streaming.Stream` reads its chunks: a bank's zarr chunks, or a dataset.

A source has ``rows`` (rows per chunk), ``num_chunks`` and ``read(i) -> (theta, x, ok)``, the
chunk's rows as float32 tensors and which of them the source marks usable (a bank's status
is ok; a dataset's rows all are). :mod:`simgen.streaming` drops the rest, and NaN or inf rows.

**Reading a bank's chunks.** A bank (:mod:`simgen.bank`) is a local zarr v3 group whose
arrays are chunked by whole rows and encoded ``bytes`` (little-endian), then zstd, blosc or
nothing. Such a chunk is one file, and :class:`ChunkFiles` reads it in the calling thread:
the file into a reused byte buffer, decoded straight into the chunk's array. zarr's own read
of the same chunk hands the file to its event-loop thread, decodes in a worker thread and
copies the result into a fresh output array, and the freed memory of those threads' arenas
must be handed back to the system (:func:`release`) to keep a pass's peak memory bounded,
after which the next chunk's pages are faulted in again: for a 4 MB chunk of x that read
cost 1.8 times the CPU of the direct one with zstd and 4.7 times without compression
(``benchmarks/results_streaming.md``, "Reading one chunk"). An
array laid out any other way, a missing chunk file (zarr then gives the fill value) and a
chunk that does not decode to the chunk's size go through zarr (which reads or raises), so
what is read is what zarr reads; ``tests/test_streaming.py`` compares the two bit for bit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .bank import OK, Bank
from .errors import BankError, ShapeError

__all__ = ["BankSource", "ChunkFiles", "DatasetSource", "finite_rows", "release"]

#: A bank's θ and status are read whole when they take at most this much (1.3 million rows
#: of 3 parameters), so that reading a chunk is one read instead of three.
SMALL_COLUMNS_BYTES = 16 << 20


def as_rows(value: Any) -> Tensor:
    """An array or tensor as a tensor of float32 rows (booleans kept)."""
    tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.as_tensor(value)
    return tensor.float() if tensor.dtype != torch.bool else tensor


def finite_rows(data: Tensor) -> Tensor:
    """Which rows of ``data`` are all finite: a row's sum is NaN or inf when any entry is, so
    one pass over the sums finds the candidates and only they are checked entry by entry (a
    sum that overflows alone is not a NaN row)."""
    flat = data.reshape(len(data), -1)
    finite = torch.isfinite(flat.sum(1))
    if not bool(finite.all()):
        suspects = torch.nonzero(~finite).flatten()
        finite[suspects] = torch.isfinite(flat[suspects]).all(1)
    return finite


def _decoder(codecs: list[dict[str, Any]], itemsize: int) -> Any:
    """The numcodecs decoder of a zarr v3 codec list ``bytes[, zstd | blosc]``: ``False``
    for plain bytes, ``None`` for any other list (read through zarr)."""
    if not codecs or codecs[0].get("name") != "bytes":
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if endian != "little" and itemsize > 1:
        return None
    rest = [c.get("name") for c in codecs[1:]]
    if not rest:
        return False
    if rest == ["zstd"]:
        from numcodecs import Zstd

        return Zstd()  # zstd frames say how they were written: one decoder reads them all
    if rest == ["blosc"]:
        from numcodecs import Blosc

        return Blosc()  # blosc's header carries its codec, shuffle and sizes
    return None


class ChunkFiles:
    """Direct reads of the row chunks of one local zarr v3 array (see the module docstring).

    :meth:`of` gives one for an array laid out as a bank lays out its arrays, else ``None``.
    """

    def __init__(self, array: Any, root: Path, decoder: Any):
        meta = array.metadata
        self.shape, self.chunk = tuple(array.shape), tuple(meta.chunk_grid.chunk_shape)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.key = meta.chunk_key_encoding.encode_chunk_key
        self.folder = root / array.path
        self.decoder = decoder
        self.raw = bytearray()
        self.lock = threading.Lock()  # the byte buffer is shared by every read

    @classmethod
    def of(cls, array: Any) -> ChunkFiles | None:
        try:
            from zarr.storage import LocalStore

            meta = array.metadata
            if meta.zarr_format != 3 or not isinstance(array.store, LocalStore):
                return None
            chunk = tuple(meta.chunk_grid.chunk_shape)
            if chunk[1:] != tuple(array.shape[1:]):
                return None
            codecs = [c.to_dict() for c in meta.codecs]
            decoder = _decoder(codecs, np.dtype(array.dtype).itemsize)
        except (AttributeError, TypeError, ValueError, ImportError):
            return None  # a zarr without these names: read through zarr
        if decoder is None:
            return None
        return cls(array, Path(array.store.root), decoder)

    def read(self, i: int) -> np.ndarray | None:
        """The rows of chunk ``i`` (the last chunk cut to the array's end), or ``None`` when
        the chunk is to be read through zarr (no file, or a size that does not match)."""
        path = self.folder / self.key((i,) + (0,) * (len(self.shape) - 1))
        out = np.empty(self.chunk, self.dtype)
        try:
            with self.lock, open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if self.decoder is False:
                    if size != out.nbytes:
                        return None
                    file.readinto(memoryview(out).cast("B"))
                else:
                    if len(self.raw) < size:
                        self.raw = bytearray(size)
                    view = memoryview(self.raw)[:size]
                    if file.readinto(view) != size:
                        return None
                    self.decoder.decode(view, out=out)
        except Exception:  # noqa: BLE001 - no file, or not decodable: zarr reads (or raises)
            return None
        rows = min(self.chunk[0], self.shape[0] - i * self.chunk[0])
        return out[:rows]


class BankSource:
    """A bank's zarr chunks; rows not marked ok are dropped."""

    def __init__(self, path: str | Path):
        self.bank = Bank.reader(path)
        group = self.bank.group
        if self.bank._array("x") is None:
            raise BankError(f"The bank {self.bank.path} holds no simulated x yet.")
        self.theta, self.x, self.status = group["theta"], group["x"], group["status"]
        self.rows = self.bank.batch_size
        self.num_chunks = max(1, -(-self.bank.num_simulations // self.rows))
        n, d = self.theta.shape
        if n * (4 * d + 1) <= SMALL_COLUMNS_BYTES:  # one read per chunk, not three
            self.theta, self.status = self.theta[:], self.status[:]
        self.files = {
            name: ChunkFiles.of(array)
            for name, array in (("theta", self.theta), ("x", self.x), ("status", self.status))
            if not isinstance(array, np.ndarray)
        }
        #: Whether a read may have gone through zarr's threads (see :func:`release`).
        self.threaded = any(files is None for files in self.files.values())

    def _column(self, name: str, array: Any, i: int) -> np.ndarray:
        rows = slice(i * self.rows, (i + 1) * self.rows)
        if isinstance(array, np.ndarray):
            return array[rows]
        files = self.files.get(name)
        direct = files.read(i) if files is not None else None
        if direct is None:
            self.threaded = True
            return array[rows]
        return direct

    def read(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        try:
            theta = self._column("theta", self.theta, i)
            x = self._column("x", self.x, i)
            status = self._column("status", self.status, i)
        except Exception as exc:  # noqa: BLE001 - any unreadable chunk is the same mistake
            raise BankError(
                f"Chunk {i} of the bank {self.bank.path} is unreadable ({exc}); call simulate "
                "again with the arguments that made it (and bank=) to simulate it again."
            ) from exc
        return as_rows(theta), as_rows(x), torch.from_numpy(status == OK)


class DatasetSource:
    """Any ``len``/``__getitem__`` dataset of ``(theta, x)`` batches or rows."""

    threaded = False

    def __init__(self, dataset: Any, chunk_rows: int):
        if len(dataset) < 1:
            raise ShapeError("The dataset is empty; it must hold (theta, x) batches or rows.")
        self.dataset = dataset
        theta, _ = self._item(0)
        self.batched = theta.ndim == 2
        if theta.ndim not in (1, 2):
            raise ShapeError(
                f"dataset[0] gives theta of shape {tuple(theta.shape)}; items must be (theta, "
                "x) with theta (D,) for one row or (n, D) for a batch."
            )
        self.rows = 1 if self.batched else chunk_rows
        self.num_chunks = len(dataset) if self.batched else -(-len(dataset) // chunk_rows)

    def _item(self, j: int) -> tuple[Tensor, Tensor]:
        item = self.dataset[j]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ShapeError(f"dataset[{j}] must be a (theta, x) pair; got {type(item).__name__}.")
        return as_rows(item[0]), as_rows(item[1])

    def read(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.batched:
            theta, x = self._item(i)
        else:
            items = [
                self._item(j)
                for j in range(i * self.rows, min((i + 1) * self.rows, len(self.dataset)))
            ]
            theta = torch.stack([t for t, _ in items])
            x = torch.stack([v for _, v in items])
        if len(theta) != len(x):
            raise ShapeError(
                f"Chunk {i} of the dataset has {len(theta)} theta rows but {len(x)} x rows."
            )
        return theta, x, torch.ones(len(theta), dtype=torch.bool)


def _trim() -> Callable[[], Any]:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        return lambda *_: 0


_malloc_trim = _trim()


#: Bytes of chunks read between two :func:`release` calls.
TRIM_BYTES = 4 << 20


def release() -> None:
    """Hand the pages of freed chunks back to the system (glibc's ``malloc_trim``).

    glibc keeps freed memory resident in each thread's arena; a chunk read through zarr is
    decoded in zarr's threads, and on a 120 MB bank of 4 MB chunks this lowered a pass's peak
    RSS growth from 61 to 48 MB. It costs a few milliseconds and the next chunk's page
    faults, so it runs once per ``TRIM_BYTES`` read through zarr (every chunk of wide x; at
    8 MB, every other one, the 400 MB bank of ``tests/test_streaming.py`` went 2% over its
    100 MB budget), and not for chunks read by :class:`ChunkFiles`, whose memory the calling
    thread frees and reuses.
    """
    _malloc_trim(0)
