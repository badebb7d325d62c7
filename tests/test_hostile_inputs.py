"""Hostile inputs that look harmless (issue "Nothing lost, nothing silent"): pickle expansion bombs in
CIFAR files, decompression bombs and damaged files in image folders, HTML and links out of the
folder in the runs index, and variant models that `to_plain` would make silently wrong. Each gets
one line naming what was wrong, or the right behaviour, checked against something independent."""

from __future__ import annotations

import html.parser
import io
import json
import os
import pickle
import struct
import sys
import tracemalloc
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reslab.data import unpickle
from reslab.data.datasets import load_dataset
from reslab.data.unpickle import load_pickle
from reslab.models import create_model, to_plain
from reslab.models.convert import to_residual
from reslab.models.variants import VARIANTS
from reslab.report.html import GENERATOR, SCRIPT, build_index

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_files import py2_pickle, write_cifar  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
    # the test files have the official layout, not the official bytes: their md5 warning is expected
    pytest.mark.filterwarnings("ignore:CIFAR-1(0|00).*differ from the official release"),
]

# ---------------------------------------------------------------------------------------------
# 1. pickle expansion bombs (hand-written protocol-2 opcodes)

P2 = b"\x80\x02"
ZERO_IN_MEMO_1 = b"K\x00q\x010"  # push 0, memo[1] = it, pop


def _tuple_doubling(depth: int) -> bytes:
    """Opcodes leaving x_depth on the stack, x_0 = 0 and x_{i+1} = (x_i, x_i), both items the one
    memo entry (GET GET TUPLE2 PUT POP): 2**depth zeros in 6 bytes a level."""
    return ZERO_IN_MEMO_1 + b"h\x01h\x01\x86q\x010" * depth + b"h\x01"


def _list_doubling(depth: int) -> bytes:
    """The same with lists, x_{i+1} = [x_i, x_i] (EMPTY_LIST MARK GET GET APPENDS PUT POP)."""
    return ZERO_IN_MEMO_1 + b"](h\x01h\x01eq\x010" * depth + b"h\x01"


def _hash_bomb(depth: int) -> bytes:
    """{x_depth: None}: hashing the key visits 2**depth tuples (tuple hashes are not cached)."""
    return P2 + b"}" + _tuple_doubling(depth) + b"Ns."


def _encode_bomb(repeats: int, size: int = 4096) -> bytes:
    """One memoized str of `size` chars, encoded `repeats` times: each call makes `size` bytes."""
    head = P2 + b"c_codecs\nencode\nq\x01X" + struct.pack("<I", size) + b"a" * size + b"q\x02"
    head += b"X\x06\x00\x00\x00latin1q\x03000"
    return head + b"h\x01h\x02h\x03\x86R0" * repeats + b"N."


def _nested(obj, depth):
    for _ in range(depth):
        obj = (obj, obj)
    return obj


def test_the_bombs_are_what_they_claim():
    """Small ones, unpickled by pickle itself: the structures double each level."""
    assert pickle.loads(_hash_bomb(3)) == {_nested(0, 3): None}
    x = pickle.loads(P2 + _list_doubling(3) + b".")
    assert x == [[[0, 0], [0, 0]], [[0, 0], [0, 0]]] and x[0] is x[1]
    assert pickle.loads(_encode_bomb(2)) is None


@pytest.fixture
def never_unpickled(monkeypatch):
    """Refusals that must come before a single object is built."""

    def load(self):
        raise AssertionError("the file reached the unpickler")

    monkeypatch.setattr(unpickle.RestrictedUnpickler, "load", load)


def _valid_batch_with(labels_opcodes: bytes) -> bytes:
    """A CIFAR batch dict, b'data' a real (1, 3072) uint8 array, b'labels' given as raw opcodes."""
    data = py2_pickle({b"data": np.zeros((1, 3072), np.uint8)})
    assert data.endswith(b"u.")  # ... SETITEMS STOP: insert the labels before the SETITEMS
    return data[:-2] + b"U\x06labels" + labels_opcodes + b"u."


@pytest.mark.parametrize(
    "payload, what",
    [
        (_hash_bomb(80), "larger than a"),  # a dict key of 2**80 tuples
        (_valid_batch_with(_list_doubling(60)), "larger than a"),  # labels of 2**60 ints
        (_encode_bomb(3000), "larger than a"),  # 12 MB of bytes from a 31 KB file
        (
            P2 + b"Nr\xff\xff\xff\x0f.",
            "memo index 268435455 at opcode 2 is past",
        ),  # pickle itself: 4 GB, 27 s
        (P2 + b"K\x00" + b"\x85" * 100 + b".", "more than 32 deep"),
        (P2 + b"cnumpy\nndarray\n(K\x01t\x81.", "opcode NEWOBJ"),  # ndarray.__new__(*args)
        # a list grows after it was stored (in k tuples, by m items: k*m counted as k + m)
        (P2 + b"]q\x01h\x01h\x01\x860h\x01K\x01a.", "changes an object after storing it"),
    ],
    ids=["hash", "nested-labels", "encode", "memo", "depth", "newobj", "grow-after-share"],
)
def test_expansion_bombs_are_refused_before_anything_is_built(
    tmp_path, never_unpickled, payload, what
):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=f"data_batch_1: not a valid CIFAR pickle .*{what}") as e:
        load_pickle(path)
    assert "\n" not in str(e.value)


# the globals an array starts with, and np.dtype("u1") with its state, as Python 2 wrote them
RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
U1 = (
    b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
)


@pytest.mark.parametrize(
    "payload, what",
    [
        (P2 + b"c__builtin__\nbytes\n\x8a\x06" + (1 << 40).to_bytes(6, "little") + b"\x85R.",
         "only bytes\\(\\) with no arguments"),  # bytes(2**40)
        (P2 + RECONSTRUCT + b"J\x00\x00\x00\x40J\x00\x00\x00\x40\x86U\x01b\x87R.",
         "only numpy's _reconstruct"),  # an empty array of 2**60 bytes
        (P2 + RECONSTRUCT + b"K\x00\x85U\x01b\x87R(K\x01J\x00\x00\x00\x40J\x00\x00\x00\x40\x86"
         + U1 + b"\x89U\x03abctb.", "buffer size does not match"),  # shape 2**60, 3 data bytes
        (P2 + b"cnumpy\ndtype\nU\x12(1000000,100000)u1K\x00K\x01\x87R.",
         "only plain numeric dtypes"),  # a 10**11-byte item
        (P2 + b"cnumpy\ndtype\nU\x02O8K\x00K\x01\x87R.", "only plain numeric dtypes"),
    ],
    ids=["bytes-n", "reconstruct-shape", "setstate-shape", "subarray-dtype", "object-dtype"],
)  # fmt: skip
def test_calls_that_would_allocate_are_refused_without_allocating(tmp_path, payload, what):
    path = tmp_path / "test_batch"
    path.write_bytes(payload)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"test_batch: not a valid CIFAR pickle .*{what}"):
            load_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # under 1 MB, for objects of 2**40 bytes and more


def test_a_bomb_in_a_dataset_file_names_the_file(tmp_path):
    write_cifar(tmp_path, py2=True)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(_valid_batch_with(_list_doubling(60)))
    with pytest.raises(ValueError, match=r"data_batch_2: not a valid CIFAR pickle \(it describes"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_nested_labels_that_fit_are_refused_before_numpy_expands_them(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(_valid_batch_with(_list_doubling(4)))  # within the budget: 16 zeros
    with pytest.raises(ValueError, match=r"data_batch_1: b'labels' must be 1 integers, got a list"):
        load_dataset("cifar10", root=tmp_path, download=False)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("py2", [True, False])
def test_real_cifar_batches_still_load(tmp_path, name, py2):
    written = write_cifar(tmp_path, name=name, py2=py2)
    for split in ("train", "test"):
        data = load_dataset(name, split, root=tmp_path, download=False)
        assert np.array_equal(data.images.numpy(), written[split][0])
        assert np.array_equal(data.labels.numpy(), written[split][1])


def test_real_batches_cost_a_few_units_of_work_per_byte():
    x = np.random.default_rng(0).integers(0, 256, (100, 3072), dtype=np.uint8)
    d = {b"data": x, b"labels": list(range(100)), b"filenames": [b"%d.png" % i for i in range(100)]}
    for raw in (py2_pickle(d), pickle.dumps(d, protocol=2)):
        assert 1 <= unpickle.scan(raw) / len(raw) <= 4 < unpickle.WORK_PER_BYTE


# ---------------------------------------------------------------------------------------------
# 2. image folders: decompression bombs, truncated and fake images


def _png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(
        seed
    )  # noise: PNG cannot compress it, so half the file is half the data
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _image_folder(root: Path, odd: bytes, size=(4, 3)) -> Path:
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
        (root / split / "cat" / "a.png").write_bytes(_png(*size))
    (root / "train" / "cat" / "b.png").write_bytes(odd)
    return root / "train" / "cat" / "b.png"


def _load_error(root: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not get out either
        with pytest.raises(ValueError) as e:
            load_dataset(f"imagefolder:{root}")
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    "size, shown", [((5, 3), "5x3"), ((6, 5), "30")], ids=["warned-by-pil", "refused-by-pil"]
)
def test_decompression_bombs_get_one_line(tmp_path, monkeypatch, size, shown):
    """Above MAX_IMAGE_PIXELS PIL warns, above twice that it raises: one line either way."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12)  # a.png (4x3) is exactly at the limit
    bomb = _image_folder(tmp_path, _png(*size), size=(4, 3))
    message = f"{bomb}: image of {shown} pixels is larger than reslab decodes (limit 12 pixels)"
    assert _load_error(tmp_path) == message


@pytest.mark.parametrize(
    "content",
    [_png(16, 16)[: len(_png(16, 16)) // 2], b"not an image at all", b"", _png(16, 16)[:40]],
    ids=["first-half", "text", "empty", "header-only"],
)
def test_damaged_images_get_one_line(tmp_path, content):
    bad = _image_folder(tmp_path, content, size=(16, 16))
    assert _load_error(tmp_path) == f"{bad} is not a readable image (truncated or damaged)"


def test_an_image_folder_within_the_limit_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12)
    _image_folder(tmp_path, _png(4, 3, seed=1))
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.images.shape == (2, 3, 3, 4)
    img = np.array(Image.open(io.BytesIO(_png(4, 3, seed=1))))
    assert torch.equal(data.images[1], torch.from_numpy(img).permute(2, 0, 1))


# ---------------------------------------------------------------------------------------------
# 3. the runs index: names from disk are text, links stay below the folder


class _Page(html.parser.HTMLParser):
    """The start tags, link targets, text and script contents of a page, as a browser parses them."""

    def __init__(self):
        super().__init__()
        self.tags, self.hrefs, self.text, self.scripts, self.in_script = [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hrefs += [v for k, v in attrs if tag == "a" and k == "href"]
        self.in_script = tag == "script"

    def handle_endtag(self, tag):
        self.in_script = self.in_script and tag != "script"

    def handle_data(self, data):
        (self.scripts if self.in_script else self.text).append(data)


def _report(folder: Path, summary: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text("<html>a report</html>")
    if summary is not None:
        (folder / "summary.json").write_text(summary)
    return folder / "report.html"


NAMES = [
    "<script>alert(1)</script>",  # a folder "<script>alert(1)<" holding "script>"
    'quote " amp & hash # query ? space ü',
    "javascript:alert(1)",
    "%2e%2e",
]


def test_index_shows_names_as_text_and_links_only_below_the_root(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    _report(outside, json.dumps({"study": "LEAKED"}))
    expected = [_report(root / name) for name in NAMES]
    verdict = {"status": "<b>shown</b>", "text": "x < y & <img src=x onerror=alert(1)>"}
    expected.append(_report(root / "html", json.dumps({"study": "<i>s</i>", "verdict": verdict})))
    expected.append(_report(root / "list", "[1, 2]"))  # JSON, not an object
    expected.append(_report(root / "str-verdict", '{"verdict": "just text"}'))
    expected.append(_report(root / "surrogate", '{"study": "\\ud800"}'))
    expected.append(_report(root / "leak"))
    (root / "leak" / "summary.json").symlink_to(outside / "summary.json")
    raw = os.fsencode(root) + b"/bad\xff"  # not UTF-8
    os.mkdir(raw)
    Path(os.fsdecode(raw + b"/report.html")).write_text("x")
    expected.append(Path(os.fsdecode(raw + b"/report.html")))
    (root / "dirlink").symlink_to(outside)  # a folder link to a page outside
    (root / "filelink").mkdir()
    (root / "filelink" / "report.html").symlink_to(outside / "report.html")

    page = _Page()
    page.feed(build_index(root).read_text(encoding="utf-8"))

    assert page.tags.count("script") == 1 and page.scripts == [SCRIPT]
    assert not {"b", "i", "img"} & set(page.tags)
    text = "".join(page.text)
    for shown in [*NAMES, "<b>shown</b>", verdict["text"], "<i>s</i>", "bad?"]:
        assert shown in text
    assert "LEAKED" not in text
    targets = []
    for href in page.hrefs:
        parts = urllib.parse.urlsplit(href)
        assert not (parts.scheme or parts.netloc or parts.query or parts.fragment)
        assert not href.startswith("/") and ".." not in href.split("/")
        assert set(href) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789%/_.-~"
        )
        target = Path(os.fsdecode(os.fsencode(root) + b"/" + urllib.parse.unquote_to_bytes(href)))
        assert target.is_file() and not target.is_symlink()
        targets.append(target.resolve())
    assert sorted(targets) == sorted(p.resolve() for p in expected)


def test_index_is_not_written_through_a_link(tmp_path):
    (tmp_path / "runs").mkdir()
    elsewhere = tmp_path / "elsewhere.html"
    elsewhere.write_text(f"{GENERATOR} someone's page")
    (tmp_path / "runs" / "index.html").symlink_to(elsewhere)
    with pytest.raises(FileExistsError, match="index.html is a link"):
        build_index(tmp_path / "runs")
    assert elsewhere.read_text() == f"{GENERATOR} someone's page"


# ---------------------------------------------------------------------------------------------
# 4. to_plain: each plain block outputs its residual branch alone, or to_plain refuses


def _randomize_(model: nn.Module) -> nn.Module:
    """Every parameter and norm statistic random, so no branch is zero by its init."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _branch_alone(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual block's own forward with its shortcut h(s) replaced by zeros."""
    real = block.shortcut_of
    block.shortcut_of = lambda s: torch.zeros_like(real(s))
    try:
        return block(x)
    finally:
        del block.shortcut_of


def _blocks(model: nn.Module) -> list[nn.Module]:
    return model.residual_blocks()


def _block_io(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), o.clone())))
        for b in _blocks(model)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _cnn() -> nn.Sequential:
    c = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    c += [nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    c += [nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(*c, nn.Flatten(), nn.Linear(8 * 4 * 4, 3))


PLAIN_ALLOWED = [
    ("resnet-8", {}),  # option A
    ("resnet-8", {"shortcut": "B"}),
    ("resnet-8", {"shortcut": "C", "norm": "group"}),
    ("resnet-8", {"branch_scale": "rezero"}),
    ("resnet-8", {"branch_scale": "skipinit"}),
    ("resnet-8", {"branch_scale": "fixup", "shortcut": "B"}),
    ("resnet-8", {"zero_init_residual": True}),
    ("resnet-11", {"block": "bottleneck"}),
    ("preact_resnet-8", {}),
    ("preact_resnet-11", {"block": "bottleneck"}),
    ("resmlp-4", {"img_size": 8, "shortcut": "C"}),
    ("resmlp-4", {"img_size": 8, "branch_scale": "fixup"}),
    ("to_residual", {}),
]


@pytest.mark.parametrize("name, kw", PLAIN_ALLOWED, ids=lambda v: str(v))
def test_to_plain_blocks_output_their_branch_alone(name, kw):
    model = (
        to_residual(_cnn(), example_input=torch.zeros(1, 3, 8, 8))
        if name == "to_residual"
        else create_model(name, **kw)
    )
    model = _randomize_(model)
    plain = to_plain(model).eval()
    x = torch.randn(2, 3, 8, 8)
    res_io, plain_io = _block_io(model, x), _block_io(plain, x)
    assert len(plain_io) == len(res_io) == len(_blocks(model))
    shortcut_mattered = False
    with torch.no_grad():
        for block, (a, out) in zip(_blocks(model), plain_io, strict=True):
            assert torch.equal(out, _branch_alone(block, a))
            shortcut_mattered |= not torch.allclose(out, block(a))
    assert shortcut_mattered
    assert all(b.shortcut == "none" and b.downsample is None for b in _blocks(plain))
    assert not any(".downsample." in k for k in plain.state_dict())


def test_to_plain_by_hand_for_basic_and_preact_blocks():
    x = torch.randn(2, 16, 8, 8)
    b = to_plain(_randomize_(create_model("resnet-8"))).eval().layer1[0]
    p = to_plain(_randomize_(create_model("preact_resnet-8"))).eval().layer1[0]
    with torch.no_grad():
        assert torch.equal(b(x), torch.relu(b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x)))))))
        first = p.conv1(torch.relu(p.bn1(x)))
        assert torch.equal(p(x), p.conv2(torch.relu(p.bn2(first))))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_to_plain_refuses_variant_units(variant):
    model = create_model(f"resnet-8+{variant}")
    with pytest.raises(ValueError, match=rf"to_plain: resnet-8\+{variant} has Unit blocks") as e:
        to_plain(model)
    assert "\n" not in str(e.value)


def test_to_plain_refuses_a_block_it_does_not_know():
    class Foreign(nn.Module):
        shortcut = "B"

        def forward(self, x):
            return x + x

    with pytest.raises(ValueError, match="to_plain: Foreign is not a block whose shortcut"):
        to_plain(nn.Sequential(Foreign()))
