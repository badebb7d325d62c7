"""Image folders walked as a careless or hostile user leaves them (issue 23, cause 2): link loops,
FIFOs, links out of the folder, the same file twice, 16-bit and float images, a class only in test/,
an empty size. Each loads what it should, once, or stops with one line that names the culprit."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reslab.cli import main
from reslab.data import load_dataset


def _folder(root: Path, n: int = 3, classes=("cat", "dog"), test=("cat",)) -> Path:
    """`root/train/<class>/<i>.png` (n each, 4x4 of value 10 * i + class) and one test image."""
    for c, name in enumerate(classes):
        (root / "train" / name).mkdir(parents=True)
        for i in range(n):
            img = np.full((4, 4, 3), 10 * i + c, np.uint8)
            Image.fromarray(img).save(root / "train" / name / f"{i}.png")
    for name in test:
        (root / "test" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "test" / name / "0.png")
    return root


def _load(root: Path, split: str = "train", spec: str = ""):
    """The split and the warnings loading it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(f"imagefolder:{root}{spec}", split)
    return data, [str(w.message) for w in caught]


def test_link_loops_load_each_image_once_and_say_so(tmp_path):
    """Two links to their own folders used to take exponential time; one loaded 6 images as 126."""
    root = _folder(tmp_path)
    os.symlink("..", root / "train" / "cat" / "up")  # back to train/
    os.symlink(".", root / "train" / "dog" / "here")  # dog/ inside itself
    os.symlink(root / "train", root / "train" / "dog" / "again")
    data, said = _load(root)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(said) == 1 and "passed over 3 links to folders" in said[0], said


def test_a_fifo_named_like_an_image_is_passed_over_not_opened(tmp_path):
    root = _folder(tmp_path)
    os.mkfifo(root / "train" / "cat" / "x.png")  # opening it would block forever
    data, said = _load(root)
    assert len(data) == 6
    assert len(said) == 1 and "1 not regular files" in said[0] and "x.png" in said[0]


def test_links_out_of_the_folder_are_not_followed(tmp_path):
    root = _folder(tmp_path / "data")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "train" / "cat" / "o.png")
    os.symlink(root / "gone.png", root / "train" / "cat" / "m.png")  # inside, but broken
    os.symlink("self.png", root / "train" / "cat" / "self.png")  # a link to itself
    data, said = _load(root)
    assert len(data) == 6
    assert f"1 links out of {root.resolve()}" in said[0] and "2 broken links" in said[0]


def test_the_same_file_twice_is_read_once_or_refused_across_classes(tmp_path):
    root = _folder(tmp_path)
    cat = root / "train" / "cat"
    os.symlink(cat / "0.png", cat / "link.png")  # a link inside the class
    os.link(cat / "1.png", cat / "hard.png")  # a hard link: another name, the same file
    data, said = _load(root)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "2 files already read through another name" in said[0]
    os.link(cat / "2.png", root / "train" / "dog" / "9.png")
    with pytest.raises(ValueError, match=r"9.png \(class dog\) and .*cat/2.png \(class cat\) are"):
        _load(root)


def test_16_bit_images_are_scaled_not_saturated(tmp_path):
    root = _folder(tmp_path, n=0, classes=("a",), test=())
    wide = np.array([[0, 1000, 32768, 65535]] * 4, np.uint16)
    Image.fromarray(wide).save(root / "train" / "a" / "g16.png")  # PIL: mode I;16
    assert Image.open(root / "train" / "a" / "g16.png").mode == "I;16"
    (root / "test").mkdir()
    data, said = _load(root)
    assert data.images[0, :, 0].tolist() == [[0, 4, 128, 255]] * 3 and not said


@pytest.mark.parametrize(
    "dtype, kind", [(np.int32, "32-bit integer"), (np.float32, "floating-point")]
)
def test_32_bit_and_float_images_are_refused_by_name(tmp_path, dtype, kind):
    root = _folder(tmp_path, n=1, classes=("a",), test=())
    bad = root / "train" / "a" / "wide.tif"
    Image.fromarray(np.full((4, 4), 70000, dtype)).save(bad)
    with pytest.raises(ValueError) as info:
        _load(root)
    assert str(info.value) == (
        f"{bad}: a {kind} image; reslab reads 8- and 16-bit images: convert it to 8 bits"
    )


def test_a_class_only_in_test_is_refused_not_dropped(tmp_path):
    root = _folder(tmp_path, test=("cat", "cow"))
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"test/ has classes that train/ lacks: cow; a net"):
            _load(root, split)


def test_a_class_missing_from_test_keeps_its_label(tmp_path):
    data, _ = _load(_folder(tmp_path, test=("dog",)), "test")
    assert data.classes == ("cat", "dog") and data.labels.tolist() == [1]


@pytest.mark.parametrize("spec", ["@0", "@4x0", "@100000"])
def test_a_size_out_of_range_names_the_size_not_an_image(tmp_path, spec, capsys):
    root = _folder(tmp_path)
    argv = ["train", "--data", f"imagefolder:{root}{spec}", "--iters", "1", "--out", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "each side must be 1 to 8192 pixels" in err[0], err
    assert ".png" not in err[0]


def test_an_image_folder_larger_than_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    from reslab import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 100)  # bytes
    with pytest.raises(ValueError, match=r"imagefolder .*train needs 288 bytes of memory, more "):
        _load(_folder(tmp_path))  # 6 images of 4x4x3 bytes
