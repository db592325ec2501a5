r"""Training data read chunk by chunk: a simulation bank, or any dataset larger than memory.

``NPE(prior).fit(bank="run.zarr")`` (and NLE's, NRE's) trains from a :class:`Stream` instead
of tensors. A stream reads its source one *chunk* at a time: a bank's chunk is one of its
zarr chunks (``batch_size`` rows, :mod:`simgen.bank`); a dataset with ``len`` and
``__getitem__`` returning ``(theta, x)`` is read item by item, an item being a batch
(``theta`` of shape ``(n, D)``) or one row (``theta`` of shape ``(D,)``, grouped
``chunk_rows`` at a time). Rows whose x or θ holds NaN or inf, and a bank's rows that failed
or were never simulated, are dropped as they are read, as :func:`simgen.read_bank` drops
them. Nothing holds more than the shuffle buffer and a few chunks.

**Set-up statistics.** Estimator set-up reads :meth:`Stream.chunks`, one pass over every
kept row, through the same :mod:`simgen.moments` code as tensors in memory.

**Validation split.** The held-out rows are a fixed set of *blocks*, decided once per fit from
the seed: each chunk is cut by position into ``per_chunk`` near-equal blocks
(``max(1, ceil(min_blocks / chunks))``, so a bank of few large chunks still holds out close
to ``validation_fraction`` of its rows), and ``max(1, round(f · blocks))`` blocks, drawn by a
seeded permutation, are the validation set. Training reads every chunk holding a training
block and skips the validation rows; validation reads only the chunks holding a validation
block, once if the validation rows fit in ``validation_bytes`` (they are then kept), else
every epoch. When they fit, the first training pass keeps the validation rows of the chunks
it reads, so the first validation pass reads only the chunks that hold no training block.

**Shuffling.** Each epoch reads the training chunks in a seeded random order into a shuffle
buffer of ``shuffle_bytes`` (at least one batch of rows); a full buffer is permuted and cut
into batches, and the fewer than ``batch_size`` rows left over stay in the buffer for the next
fill. A buffer that holds the whole training set makes this an in-memory shuffle; a smaller
one mixes rows within the chunks that share a fill. The same seed gives the same batches.
With ``prefetch`` > 0 that many chunks are read ahead in a thread, overlapping reading with
the optimizer steps in wall time (not in CPU time, and at a cost in memory: off by default;
``benchmarks/results_streaming.md`` measures both).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, ShapeError, SimulationWarning
from .stream_sources import TRIM_BYTES, BankSource, DatasetSource, finite_rows, release

__all__ = ["Split", "Stream", "StreamConfig", "as_stream"]


@dataclass(frozen=True)
class StreamConfig:
    """How a :class:`Stream` reads its source (see the module docstring).

    Attributes:
        shuffle_bytes: Size of the shuffle buffer. 16 MiB holds a whole bank of up to half a
            million rows of 8 numbers (an in-memory shuffle), and 4,096 rows of wide x (4 KB
            a row: four bank chunks mixed), which keeps training from the 400 MB bank of
            ``tests/test_streaming.py`` under its 100 MB budget (one epoch from a 120 MB bank
            of wide x grew peak RSS by 79 MB with 16 MiB, by 94-97 MB with 32 MiB).
        validation_bytes: The validation rows are kept in memory after the first epoch when
            they take at most this much (a bank of up to 160 MB at the default 10%), and
            read again every epoch otherwise.
        chunk_rows: Rows per chunk for a dataset whose items are single rows.
        min_blocks: The split cuts chunks into blocks until there are at least this many,
            so the validation share is within about ``1 / min_blocks`` of the fraction.
        prefetch: Chunks read ahead in a background thread (0, the default, reads in the
            training loop). Read-ahead overlaps reading with the optimizer steps in wall time
            but not in CPU time, and the thread's allocator arena keeps freed chunks
            resident: on an 80 MB bank of wide x two chunks ahead raised an epoch's peak RSS
            growth from 75 to 92 MB for CPU-time ratios within the seeds' spread
            (``benchmarks/results_streaming.md``).
        sample_rows: Rows of x a full pass keeps as a seeded sample (:attr:`Stream.x_sample`;
            NPE's training-x sample, :mod:`simgen.typicality`).
    """

    shuffle_bytes: int = 16 << 20
    validation_bytes: int = 16 << 20
    chunk_rows: int = 1024
    min_blocks: int = 100
    prefetch: int = 0
    sample_rows: int = 2000

    def __post_init__(self) -> None:
        for name in (
            "shuffle_bytes",
            "validation_bytes",
            "chunk_rows",
            "min_blocks",
            "sample_rows",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"StreamConfig: {name} must be a positive integer, got {value!r}."
                )
        if (
            isinstance(self.prefetch, bool)
            or not isinstance(self.prefetch, int)
            or self.prefetch < 0
        ):
            raise ConfigError(
                f"StreamConfig: prefetch must be a non-negative integer, got {self.prefetch!r}."
            )


@dataclass(frozen=True)
class Split:
    """The fixed validation blocks of one fit: ``is_validation`` ``(chunks * per_chunk,)``."""

    is_validation: Tensor
    per_chunk: int
    train_chunks: Tensor
    validation_chunks: Tensor


#: ``transform(theta, x) -> (theta, x)``, applied to every chunk's kept rows as it is read.
Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class Stream:
    """Chunks of ``(theta, x)`` from a bank path or a dataset (see the module docstring).

    Args:
        data: A bank's path (``str`` or ``Path``), or a dataset with ``len`` and
            ``__getitem__`` giving ``(theta, x)`` batches or rows.
        config: A :class:`StreamConfig`.
    """

    def __init__(self, data: Any, config: StreamConfig | None = None):
        self.config = config or StreamConfig()
        if isinstance(data, (str, Path)):
            self.source: Any = BankSource(data)
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self.source = DatasetSource(data, self.config.chunk_rows)
        else:
            raise ConfigError(
                f"bank must be a bank's path or a dataset with len() and [i] giving (theta, x); "
                f"got {type(data).__name__}."
            )
        self.num_chunks = self.source.num_chunks
        self.per_chunk = max(1, math.ceil(self.config.min_blocks / self.num_chunks))
        self.transform: Transform | None = None
        #: Rows kept and dropped (failed, never simulated, NaN or inf) by the last full pass.
        self.kept = self.dropped = 0
        self._validation: tuple[Split, list[tuple[Tensor, Tensor]] | None] | None = None
        #: The validation rows of the chunks a first training pass read, by chunk.
        self._held: tuple[Split, dict[int, tuple[Tensor, Tensor]] | None] | None = None
        #: A seeded sample of x from the last full pass (``config.sample_rows`` rows).
        self.x_sample: Tensor | None = None
        #: Rows of the last epoch's training pass and validation pass.
        self.train_rows = self.validation_rows = 0

    def with_transform(self, transform: Transform) -> Stream:
        """A stream over the same source whose chunks are ``transform(theta, x)``."""
        other = object.__new__(Stream)
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    # -- reading -----------------------------------------------------------------------
    def read(self, i: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """Chunk ``i``'s kept rows ``(theta, x, block, dropped)``: ``block`` is each row's
        block index within the chunk (by its position before rows were dropped), ``dropped``
        the number of rows dropped."""
        theta, x, keep = self.source.read(i)
        keep = keep & finite_rows(x) & finite_rows(theta)
        sizes = [len(p) for p in torch.arange(len(theta)).tensor_split(self.per_chunk)]
        block = torch.repeat_interleave(torch.arange(self.per_chunk), torch.tensor(sizes))
        dropped = int((~keep).sum())
        if dropped:
            theta, x, block = theta[keep], x[keep], block[keep]
        if self.transform is not None and len(theta):
            theta, x = self.transform(theta, x)
        return theta, x, block, dropped

    def _reads(self, chunks: Iterable[int]) -> Iterator[tuple[int, Tensor, Tensor, Tensor, int]]:
        items = [int(i) for i in chunks]
        if self.config.prefetch == 0:
            freed = 0
            for i in items:
                item = (i, *self.read(i))
                freed += item[2].nbytes
                yield item
                del item
                if freed >= TRIM_BYTES and self.source.threaded:
                    release()
                    freed = 0
            return
        yield from _prefetch(lambda i: (i, *self.read(i)), items, self.config.prefetch)

    def chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over every kept row, chunk by chunk (``(theta, x)``); at its end,
        :attr:`kept` and :attr:`dropped` count the rows of the pass."""
        kept = dropped = 0
        per = max(1, math.ceil(self.config.sample_rows / self.num_chunks))
        generator, sample = torch.Generator().manual_seed(0), []
        for _, theta, x, _, lost in self._reads(range(self.num_chunks)):
            kept, dropped = kept + len(theta), dropped + lost
            if len(theta):
                sample.append(x[torch.randperm(len(x), generator=generator)[:per]].clone())
                yield theta, x
        self.kept, self.dropped = kept, dropped
        self.x_sample = torch.cat(sample)[: self.config.sample_rows] if sample else None

    def peek(self) -> tuple[Tensor, Tensor]:
        """The first chunk that keeps any rows (``(theta, x)``, transformed)."""
        for i in range(self.num_chunks):
            theta, x, _, _ = self.read(i)
            if len(theta):
                return theta, x
        raise ShapeError("The bank or dataset holds no usable rows (every row failed or is NaN).")

    def check_counts(self, what: str = "bank") -> None:
        """After a pass: a :class:`ShapeError` below 2 kept rows, a
        :class:`SimulationWarning` counting the dropped ones."""
        if self.kept < 2:
            raise ShapeError(
                f"The {what} holds {self.kept} usable rows; at least 2 are needed to train."
            )
        if self.dropped:
            warnings.warn(
                f"{self.dropped} of {self.kept + self.dropped} rows of the {what} failed, were "
                "never simulated or hold NaN or inf; they are skipped.",
                SimulationWarning,
                stacklevel=3,
            )

    # -- the split and the batches -------------------------------------------------------
    def split(self, fraction: float, generator: torch.Generator) -> Split:
        """The seeded validation blocks (see the module docstring)."""
        n = self.num_chunks * self.per_chunk
        n_val = max(1, int(round(fraction * n)))
        if n - n_val < 1:
            raise ConfigError(
                f"The data has {self.num_chunks} chunk(s), too few to hold out a validation "
                "set; give it more rows or lower validation_fraction."
            )
        is_val = torch.zeros(n, dtype=torch.bool)
        is_val[torch.randperm(n, generator=generator)[:n_val]] = True
        per_chunk = is_val.reshape(self.num_chunks, self.per_chunk)
        return Split(
            is_val,
            self.per_chunk,
            torch.nonzero(~per_chunk.all(1)).flatten(),
            torch.nonzero(per_chunk.any(1)).flatten(),
        )

    def train_batches(
        self, split: Split, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled training batches of exactly ``batch_size`` rows."""
        order = split.train_chunks[torch.randperm(len(split.train_chunks), generator=generator)]
        buffer: _Buffer | None = None
        rows = 0
        for i, theta, x, block, _ in self._reads(order.tolist()):
            is_val = split.is_validation[i * split.per_chunk + block]
            if bool(is_val.any()):
                self._hold(split, i, theta[is_val], x[is_val])
                theta, x = theta[~is_val], x[~is_val]
            rows += len(theta)
            if buffer is None and len(theta):
                buffer = _Buffer(theta, x, batch_size, self.config.shuffle_bytes)
            start = 0
            while buffer is not None and start < len(theta):
                start += buffer.add(theta[start:], x[start:])
                if buffer.full:
                    yield from buffer.emit(generator, device)
        if buffer is not None:
            yield from buffer.emit(generator, device)
        #: Training rows of the last epoch (the ragged rest of the last batch included).
        self.train_rows = rows

    def validation_chunks(self, split: Split) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation rows, chunk by chunk; held in memory (as one block) after the first
        pass when they take at most ``config.validation_bytes``, else read again each time."""
        cache = self._validation
        if cache is not None and cache[0] is split and cache[1] is not None:
            yield from cache[1]
            return
        rows, parts = 0, []
        for part in self._validation_parts(split):
            rows += len(part[0])
            if parts is not None:  # kept only if all of them will fit, judged by one row
                parts = parts + [part] if self._fits(split, part, rows) else None
            yield part
        self.validation_rows = rows
        if parts:  # kept as one block, so that later passes make the fewest network calls
            parts = [(torch.cat([t for t, _ in parts]), torch.cat([v for _, v in parts]))]
        self._validation = (split, parts)

    def _fits(self, split: Split, part: tuple[Tensor, Tensor], rows: int) -> bool:
        """Whether all validation rows fit in ``validation_bytes``, judged by ``part``'s rows
        and the ``rows`` seen so far."""
        row = (part[0].nbytes + part[1].nbytes) / max(len(part[0]), 1)
        share = float(split.is_validation.float().mean())
        return share * max(self.kept, rows) * row <= self.config.validation_bytes

    def _hold(self, split: Split, i: int, theta: Tensor, x: Tensor) -> None:
        """Keep chunk ``i``'s validation rows, read by a training pass, for the first
        validation pass (so it reads only chunks no training pass read), while they fit."""
        if self._validation is not None and self._validation[0] is split:
            return  # validated once already: the rows are kept, or too many to keep
        if self._held is None or self._held[0] is not split:
            self._held = (split, {})
        held = self._held[1]
        if held is not None:
            held[i] = (theta, x)
            fits = self._fits(split, (theta, x), sum(len(t) for t, _ in held.values()))
            self._held = (split, held if fits else None)

    def _validation_parts(self, split: Split) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation rows of each chunk holding any: those a training pass held, then
        the rest read."""
        held = self._held[1] if self._held is not None and self._held[0] is split else None
        self._held, held = None, held or {}
        for part in held.values():
            if len(part[0]):
                yield part
        unread = [i for i in split.validation_chunks.tolist() if i not in held]
        for i, theta, x, block, _ in self._reads(unread):
            keep = split.is_validation[i * split.per_chunk + block]
            if bool(keep.any()):
                yield theta[keep], x[keep]


class _Buffer:
    """The shuffle buffer: preallocated rows, permuted and cut into batches when full."""

    def __init__(self, theta: Tensor, x: Tensor, batch_size: int, nbytes: int):
        row = (theta[0].numel() * theta.element_size()) + (x[0].numel() * x.element_size())
        capacity = max(2 * batch_size, nbytes // max(row, 1))
        self.theta = theta.new_empty(capacity, *theta.shape[1:])
        self.x = x.new_empty(capacity, *x.shape[1:])
        self.size, self.batch_size = 0, batch_size

    @property
    def full(self) -> bool:
        return self.size == len(self.theta)

    def add(self, theta: Tensor, x: Tensor) -> int:
        take = min(len(theta), len(self.theta) - self.size)
        self.theta[self.size : self.size + take] = theta[:take]
        self.x[self.size : self.size + take] = x[:take]
        self.size += take
        return take

    def emit(
        self, generator: torch.Generator, device: torch.device
    ) -> Iterator[tuple[Tensor, Tensor]]:
        perm = torch.randperm(self.size, generator=generator)
        bs = self.batch_size
        whole = self.size - self.size % bs
        for i in range(0, whole, bs):
            idx = perm[i : i + bs]
            yield self.theta[idx].to(device), self.x[idx].to(device)
        rest = perm[whole:]
        self.theta[: len(rest)] = self.theta[rest]
        self.x[: len(rest)] = self.x[rest]
        self.size = len(rest)


def _prefetch(read: Callable[[int], Any], items: list[int], depth: int) -> Iterator[Any]:
    """``read(i)`` for each item, computed up to ``depth`` items ahead in a thread."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for i in items:
                value = read(i)
                while not stop.is_set():
                    try:
                        results.put((True, value), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            results.put((False, exc))
            return
        results.put((True, _DONE))

    thread = threading.Thread(target=work, daemon=True, name="simgen-stream")
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.1)
        thread.join()


_DONE = object()


def as_stream(data: Any) -> Stream:
    """``data`` as a :class:`Stream` (a stream is taken as it is)."""
    return data if isinstance(data, Stream) else Stream(data)
