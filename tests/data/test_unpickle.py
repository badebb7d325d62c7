"""The restricted unpickler loads what CIFAR files hold and refuses anything that could run code."""

import os
import pickle

import numpy as np
import pytest
from data_files import CIFAR10_META, py2_pickle

from reslab.data.unpickle import load_pickle


class _Hostile:
    """Unpickling this would call os.system and create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_py2_meta_loads(tmp_path):
    (tmp_path / "batches.meta").write_bytes(CIFAR10_META)
    meta = load_pickle(tmp_path / "batches.meta")
    assert meta[b"label_names"][:2] == [b"airplane", b"automobile"]
    assert meta[b"num_vis"] == 3072


@pytest.mark.parametrize("writer", ["py2", "py3-protocol-2"])
def test_numpy_batch_round_trips(tmp_path, writer):
    x = np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072)
    d = {b"data": x, b"labels": [0, 9, 300], b"filenames": [b"a.png", b"", b"c.png"]}
    raw = py2_pickle(d) if writer == "py2" else pickle.dumps(d, protocol=2)
    (tmp_path / "batch").write_bytes(raw)
    out = load_pickle(tmp_path / "batch")
    assert np.array_equal(out[b"data"], x) and out[b"labels"] == [0, 9, 300]
    assert out[b"filenames"] == [b"a.png", b"", b"c.png"]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_hostile_pickle_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Hostile(marker)}, protocol=protocol))
    with pytest.raises(ValueError, match=r"data_batch_1.*(posix|os|nt)\.system' is not allowed"):
        load_pickle(path)
    assert not marker.exists()
    assert pickle.loads(path.read_bytes()) == {b"data": 0} and marker.exists()  # it was hostile


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(eval, protocol=2),  # builtins.eval
        b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R.",  # other codecs
        b"\x80\x02cbuiltins\ngetattr\n.",
        b"\x80\x02X\x01\x00\x00\x00aQ.",  # persistent id
    ],
)
def test_other_globals_refused(tmp_path, payload):
    (tmp_path / "f").write_bytes(payload)
    with pytest.raises(ValueError, match="not a valid CIFAR pickle"):
        load_pickle(tmp_path / "f")


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", CIFAR10_META[:80]])
def test_garbage_and_truncated_name_the_file(tmp_path, content):
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(ValueError, match=r"test_batch: not a valid CIFAR pickle"):
        load_pickle(tmp_path / "test_batch")
