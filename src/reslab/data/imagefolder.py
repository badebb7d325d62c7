"""Image folders as uint8 tensors: `<path>/train/<class>/<image>` and `<path>/test/<class>/<image>`
(`val/` accepted for test), decoded once with PIL to RGB, resized where the spec asks (`@S`, `@HxW`);
what `reslab.data.load_dataset("imagefolder:<path>")` reads (the rules: `reslab.data.datasets`).
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import torch

from reslab import limits


def parse_imagefolder(spec: str) -> tuple[Path, tuple[int, int] | None]:
    """'<path>', '<path>@32' or '<path>@32x48' -> (path, (H, W) or None)."""
    m = re.fullmatch(r"(.+?)(?:@(\d+)(?:x(\d+))?)?", spec)
    if m is None:
        raise ValueError(
            f"bad imagefolder spec {spec!r}; use imagefolder:<path>, <path>@32 or <path>@32x48"
        )
    size = (int(m[2]), int(m[3] or m[2])) if m[2] else None
    if size is not None and not all(1 <= s <= limits.MAX_SIDE for s in size):
        raise ValueError(
            f"imagefolder size {m[2]}{'x' + m[3] if m[3] else ''} in {spec!r}: each side must be "
            f"1 to {limits.MAX_SIDE} pixels"
        )
    return Path(m[1]).expanduser(), size


def _decode_image(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (H, W, 3), resized to `size` (H, W) if given. One-line ValueError for an
    image of more than PIL's `Image.MAX_IMAGE_PIXELS` (PIL only warns up to twice that: a
    decompression bomb), for a file PIL cannot decode (truncated, damaged, not an image) and for a
    bit depth reslab does not convert (`_to_rgb8`)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # reslab says it below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(path)  # reads the header only
        with img:
            shape = f"{img.width}x{img.height}"
            if limit is None or img.width * img.height <= limit:
                img = _to_rgb8(img, path)
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(img)
    except Image.DecompressionBombError as e:  # above twice the limit PIL opens nothing
        assert limit is not None  # PIL raises it only under a limit
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        shape = pixels[1] if pixels else f"more than {2 * limit}"
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # not found, no permission, ...: the file system's own one line
        if isinstance(e, ValueError) and str(e).startswith(f"{path}: "):
            raise  # _to_rgb8's own
        raise ValueError(f"{path} is not a readable image (truncated or damaged)") from None
    raise ValueError(
        f"{path}: image of {shape} pixels is larger than reslab decodes (limit {limit} pixels)"
    )


def _to_rgb8(img, path: str):
    """`img` as 8-bit RGB. PIL's own convert("RGB") saturates 16-bit greyscale (I;16: every value
    above 255 becomes 255), so those are scaled here, 0..65535 -> 0..255; 16-bit colour PNGs PIL
    already reads as 8-bit RGB. 32-bit integer and float images have no one scale: refused."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.uint32)  # (H, W), the file's byte order read by numpy
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise ValueError(
            f"{path}: a {kind} image; reslab reads 8- and 16-bit images: convert it to 8 bits"
        )
    return img.convert("RGB")


def _image_files(folder: Path, classes: tuple[str, ...], root: Path) -> list[tuple[str, int]]:
    """(file, label) of each image under `folder/<class>/`, in torchvision's order (classes, then
    folders and file names, sorted). Only regular files count, each once: the walk never follows a
    link to a folder (no loops), nor a link to a file outside `root`; a file reached twice (a link,
    a hard link) is read once, and refused when the two are in different classes. What is passed
    over is said in one warning; an unreadable folder is an error, not a silent gap."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root, present = Path(os.path.realpath(root)), set(_class_folders(folder))
    samples: list[tuple[str, int]] = []
    seen: dict[tuple[int, int], tuple[str, str]] = {}  # (device, inode) -> (path, class)
    skipped: dict[str, list[str]] = {}  # why -> paths

    def skip(why: str, path: str) -> None:
        skipped.setdefault(why, []).append(path)

    def fail(err: OSError) -> None:
        raise err

    for label, name in enumerate(classes):
        if name not in present:  # a class with no folder in this split (test/ may lack one)
            continue
        for top, dirs, files in sorted(os.walk(folder / name, onerror=fail)):
            for d in dirs:
                if os.path.islink(os.path.join(top, d)):
                    skip("links to folders", os.path.join(top, d))
            for file in sorted(files):
                path = os.path.join(top, file)
                if not file.lower().endswith(IMG_EXTENSIONS):
                    continue
                # realpath, not resolve(): a link to itself is passed over, not an error
                if os.path.islink(path) and not Path(os.path.realpath(path)).is_relative_to(root):
                    skip(f"links out of {root}", path)
                    continue
                try:
                    st = os.stat(path)
                except OSError:  # a link to nothing, or to itself
                    skip("broken links", path)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skip("not regular files", path)
                    continue
                first = seen.setdefault((st.st_dev, st.st_ino), (path, name))
                if first[0] != path:
                    if first[1] != name:
                        raise ValueError(
                            f"imagefolder {folder}: {path} (class {name}) and {first[0]} (class "
                            f"{first[1]}) are the same file; an image belongs to one class"
                        )
                    skip("files already read through another name", path)
                    continue
                samples.append((path, label))
    if skipped:
        counts = ", ".join(f"{len(paths)} {why}" for why, paths in skipped.items())
        example = next(iter(skipped.values()))[0]
        warnings.warn(
            f"imagefolder {folder}: passed over {counts} (e.g. {example}); reslab reads each "
            "regular file once and follows no link to a folder or out of the dataset folder",
            stacklevel=3,
        )
    return samples


def _class_folders(folder: Path) -> list[str]:
    """The class folders of a split: its sub-folders, links to folders aside (never followed)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))


def _decode_folder(
    folder: Path, classes: tuple[str, ...], size: tuple[int, int] | None, root: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `<folder>/<class>/<image>` with PIL (at load time only) into uint8 (N, 3, H, W)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    samples = _image_files(folder, classes, root)
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {folder}/<class>/")
    arrays = []
    for path, _ in samples:
        arrays.append(_decode_image(path, size))  # (H, W, 3)
        if len(arrays) == 1:  # all share its size: the whole split's bytes are known now
            limits.check_memory(len(samples) * arrays[0].nbytes, f"imagefolder {folder}")
        if arrays[-1].shape != arrays[0].shape:
            (h0, w0), (h, w) = arrays[0].shape[:2], arrays[-1].shape[:2]
            raise ValueError(
                f"imagefolder {folder}: {samples[0][0]} is {h0}x{w0} but {path} is {h}x{w}; "
                f"give a size to resize all, e.g. imagefolder:{folder.parent}@{h0}x{w0}"
            )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    return images, torch.tensor([label for _, label in samples], dtype=torch.int64)


def read_imagefolder(
    spec: str, split: str
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
    """(images uint8 (N, 3, H, W), labels int64 (N,), classes, mean, std) of split `split` of the
    folder `spec` names (`<path>[@S | @HxW]`); mean and std per channel, of the training split."""
    path, size = parse_imagefolder(spec)
    candidates = {"train": ["train"], "test": ["test", "val"]}
    folders = {
        s: next((path / d for d in ds if (path / d).is_dir()), None) for s, ds in candidates.items()
    }
    train_dir, test_dir, split_dir = folders["train"], folders["test"], folders[split]
    if train_dir is None or split_dir is None:
        raise FileNotFoundError(
            f"imagefolder {path}: expected {path}/train/<class>/<image> and {path}/test/<class>/<image> (or val/)"
        )
    classes = tuple(_class_folders(train_dir))
    extra = sorted(set(_class_folders(test_dir)) - set(classes)) if test_dir else []
    if test_dir and extra:
        raise ValueError(
            f"imagefolder {path}: {test_dir.name}/ has classes that train/ lacks: "
            f"{', '.join(extra)}; a net trained on train/ cannot predict them"
        )
    images, labels = _decode_folder(split_dir, classes, size, path)
    train = images if split == "train" else _decode_folder(train_dir, classes, size, path)[0]
    pixels = train.transpose(0, 1).flatten(1).float().div_(255)  # (C, N*H*W) of the training split
    mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
    return images, labels, classes, mean, std
