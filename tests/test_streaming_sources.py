"""A bank's chunks read directly (simgen.stream_sources.ChunkFiles) are what zarr reads, bit for
bit, for every codec a bank may carry; a missing chunk reads as zarr's fill value, a damaged
one raises a BankError, and an array laid out otherwise is read through zarr."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
import zarr
from zarr.codecs import BloscCodec

from simgen import simulate
from simgen.errors import BankError, SimulationWarning
from simgen.stream_sources import BankSource, ChunkFiles


def _simulator(theta, generator=None):
    """Three numbers a row; NaN wherever theta[:, 0] > 0.5 (a failed row)."""
    x = theta.repeat(1, 2)[:, :3] + torch.randn(len(theta), 3, generator=generator)
    x[theta[:, 0] > 0.5] = float("nan")
    return x


@pytest.fixture(scope="module")
def banks(tmp_path_factory, linear2):
    """One bank of 1,100 rows in chunks of 250 (the last one short), and copies of it whose x
    is stored as plain bytes and through blosc."""
    folder = tmp_path_factory.mktemp("sources")
    path = folder / "zstd.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)
        simulate(_simulator, linear2.prior, 1100, seed=1, batch_size=250, bank=path)
    out = {"zstd": path}
    for name, compressors in (("bytes", None), ("blosc", [BloscCodec(cname="lz4")])):
        copy = folder / f"{name}.zarr"
        shutil.copytree(path, copy)
        group = zarr.open_group(copy, mode="r+")
        data, chunks = group["x"][:], group["x"].chunks
        del group["x"]
        group.create_array(
            "x", shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=np.nan,
            compressors=compressors,
        )  # fmt: skip
        group["x"][:] = data
        out[name] = copy
    return out


def _zarr_chunk(path, i, rows=250):
    x = zarr.open_group(path, mode="r")["x"]
    return x[i * rows : (i + 1) * rows]


@pytest.mark.parametrize("codec", ["zstd", "bytes", "blosc"])
def test_direct_reads_equal_zarr_bit_for_bit(banks, codec):
    source = BankSource(banks[codec])
    assert isinstance(source.files["x"], ChunkFiles)  # the direct path, not zarr's
    lengths = []
    for i in range(source.num_chunks):
        theta, x, ok = source.read(i)
        expected = _zarr_chunk(banks[codec], i)
        assert x.dtype == torch.float32
        assert np.array_equal(x.numpy(), expected, equal_nan=True)
        assert bool(torch.isnan(x[~ok]).all()) and not bool(torch.isnan(x[ok]).any())
        lengths.append(len(x))
    assert lengths == [250, 250, 250, 250, 100]
    assert not source.threaded  # nothing went through zarr's threads


def test_missing_chunk_reads_as_zarr_fill_and_damaged_one_raises(banks, tmp_path):
    path = tmp_path / "damaged.zarr"
    shutil.copytree(banks["zstd"], path)
    (path / "x" / "c" / "1" / "0").unlink()
    (path / "x" / "c" / "2" / "0").write_bytes(b"\x00garbage")
    source = BankSource(path)
    _, x, _ = source.read(1)
    assert bool(torch.isnan(x).all()) and x.shape == (250, 3)
    assert source.threaded  # read through zarr
    with pytest.raises(BankError, match="Chunk 2 of the bank .* unreadable"):
        source.read(2)
    _, x, _ = source.read(3)  # the other chunks still read directly and correctly
    assert np.array_equal(x.numpy(), _zarr_chunk(path, 3), equal_nan=True)


def test_array_chunked_across_columns_is_read_through_zarr(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr", mode="w")
    whole = group.create_array("a", shape=(10, 4), dtype="float32", chunks=(5, 4))
    split = group.create_array("b", shape=(10, 4), dtype="float32", chunks=(5, 2))
    assert isinstance(ChunkFiles.of(whole), ChunkFiles)
    assert ChunkFiles.of(split) is None
