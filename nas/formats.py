"""File readers: IDX, CIFAR-10 binary batches, .npz, folders of images and single images -> uint8 numpy
arrays (images N×C×H×W, labels int64), with the checks that go with them.

No torch here, so `nas predict` reads its images without loading it; `data` turns these arrays into
tensors. Every reader refuses a FIFO or a device by name (`files.check_readable_file`), checks sizes from
headers before reading (a file can be a bomb), and never unpickles.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nas.errors import NasError
from nas.files import check_readable_file, name_text
from nas.names import DATASETS, counted
from nas.system import ASSUMED_MEMORY, UNKNOWN_MEMORY, available_memory

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CHANNELS = (1, 2, 3, 4)  # image channels an array may have: gray, gray+alpha, RGB, RGBA
MAX_CLASSES = 65_536
MAX_PIXELS = 4096 * 4096  # per image: a larger one is a mistake or a decompression bomb
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # PIL's mode for images of C channels
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes without colour


class DataError(NasError):
    """A dataset that cannot be found or read: the message says which file and what to do."""


@dataclass(frozen=True)
class Arrays:
    """A dataset as read from disk: uint8 images N×C×H×W and int64 labels, train and test, with class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]


def existing(path: Path) -> Path | None:
    """`path` or `path.gz`, whichever exists (a pipe or device too, for the reader to refuse by name)."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.exists() and not p.is_dir():
            return p
    return None


def read_idx(path: Path, n_dims: int) -> np.ndarray:
    """One IDX file of `n_dims` dimensions (raw or gzip) as a uint8 array, read no further than its header says."""
    check_readable_file(path, "an IDX file")
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08":
                raise DataError(
                    f"{path}: not an IDX file of unsigned bytes (magic {head.hex() or 'missing'}, expected 0000080N). "
                    "Check that the file is one of the dataset's IDX files."
                )
            if head[3] != n_dims:
                raise DataError(f"{path}: its header says {head[3]} dimensions, but IDX {'labels have' if n_dims == 1 else 'images have'} "
                                f"{n_dims}; the file is corrupt or not the one expected. Get it again.")
            raw = f.read(4 * n_dims)
            dims = struct.unpack(f">{n_dims}I", raw) if len(raw) == 4 * n_dims else None
            if dims is None:
                raise DataError(f"{path}: the file ends inside its header; it is truncated. Delete it and get it again.")
            expected = math.prod(dims)
            _check_fits(expected, f"{path} (header: {'×'.join(map(str, dims))})")
            data = f.read(expected + 1)  # one byte more tells a file longer than its header says
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read it ({e}); the file is corrupt or truncated. Delete it and get it again.") from e
    if len(data) != expected:
        held = "more" if len(data) > expected else str(len(data))
        raise DataError(
            f"{path}: header says {'×'.join(map(str, dims))} = {expected} bytes, the file holds {held}; it is "
            "truncated or corrupt. Delete it and get it again."
        )
    return np.frombuffer(bytearray(data), np.uint8).reshape(dims)  # writable for torch


def read_idx_set(folder: Path) -> tuple[np.ndarray, ...]:
    """x_train, y_train, x_test, y_test of a folder of the four IDX files (each raw or gzip)."""
    out = []
    for images, labels in ((IDX_FILES[0], IDX_FILES[1]), (IDX_FILES[2], IDX_FILES[3])):
        x, y = read_idx(existing(folder / images), 3), read_idx(existing(folder / labels), 1)
        out += _checked(x, y, f"{folder}/{images}", f"{folder}/{labels}")
    return tuple(out)


def read_cifar(folder: Path) -> tuple[np.ndarray, ...]:
    """x_train, y_train, x_test, y_test of a folder of CIFAR-10's binary batches."""
    for f in CIFAR_FILES:
        check_readable_file(folder / f, "a CIFAR-10 batch")
    _check_fits(sum((folder / f).stat().st_size for f in CIFAR_FILES), str(folder))
    parts = []
    for f in CIFAR_FILES:
        raw = np.fromfile(folder / f, np.uint8)
        if raw.size % 3073:
            raise DataError(f"{folder / f}: size {raw.size} is not a multiple of 3073-byte CIFAR records; get it again.")
        parts.append(raw.reshape(-1, 3073))
    train, test = np.concatenate(parts[:-1]), parts[-1]
    return tuple(
        t for a in (train, test) for t in _checked(a[:, 1:].reshape(-1, 3, 32, 32), a[:, 0], str(folder), str(folder))
    )


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path) -> Arrays:
    """An .npz dataset: x_train, y_train, x_test, y_test (images N×H×W, N×H×W×C or N×C×H×W), optional classes."""
    arrays = _npz_arrays(path, _dataset_keys(path))
    tensors = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise DataError(
                f"{path}: x_{split} is {x.dtype} with shape {x.shape}; expected uint8 images N×H×W (grayscale) "
                "or N×H×W×C (colour). Convert with (x * 255).astype(numpy.uint8) if they are floats in [0, 1]."
            )
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise DataError(f"{path}: y_{split} is {y.dtype} with shape {y.shape}; expected integer class labels, shape N.")
        tensors += _checked(_channels_first(x, f"{path}:x_{split}"), y, f"{path}:x_{split}", f"{path}:y_{split}")
    n_classes = max((int(t.max()) + 1 for t in (tensors[1], tensors[3]) if len(t)), default=0)
    if tensors[0].shape[1:] != tensors[2].shape[1:]:
        raise DataError(f"{path}: train images are {tuple(tensors[0].shape[1:])}, test images {tuple(tensors[2].shape[1:])}; they must match.")
    names = arrays.get("classes")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "UiuS" or len(names) != n_classes:
            raise DataError(f"{path}: 'classes' is {names.dtype} with shape {names.shape}, but the labels use "
                            f"{n_classes} classes; it must list one name per class, in label order.")
        names = [n.decode(errors="replace") if isinstance(n, bytes) else name_text(str(n)) for n in names.tolist()]
        if len(set(names)) != len(names):
            raise DataError(f"{path}: 'classes' names a class twice; give each class its own name.")
    return Arrays(*tensors, classes=tuple(names or (str(i) for i in range(n_classes))))


def _npz_arrays(path: Path, keys: Callable[[list[str]], list[str]]) -> dict[str, np.ndarray]:
    """The arrays of an .npz that `keys` picks from the names present (or refuses, with a DataError),
    each array's size checked from its header before numpy decompresses anything (a zip can be a bomb)."""
    check_readable_file(path, "an .npz file")
    try:
        with zipfile.ZipFile(path) as z:
            wanted = keys([i.filename[:-4] for i in z.infolist() if i.filename.endswith(".npy")])
            for key in wanted:
                with z.open(key + ".npy") as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                _check_fits(math.prod(shape) * dtype.itemsize, f"{path}:{key} (shape {shape})")
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in wanted}
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file. Pass an existing .npz or a dataset name ({', '.join(DATASETS)}).") from e
    except (OSError, ValueError, zlib.error, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError) as e:
        raise DataError(f"{path}: cannot read it as .npz ({e}). Save it with numpy.savez(x_train=..., ...).") from e


def _dataset_keys(path: Path) -> Callable[[list[str]], list[str]]:
    def keys(present: list[str]) -> list[str]:
        lacking = [k for k in NPZ_KEYS if k not in present]
        if lacking:
            raise DataError(f"{path}: missing {', '.join(lacking)}; an .npz dataset holds x_train, y_train, x_test, "
                            f"y_test (it has {', '.join(present) or 'nothing'}).")
        return [*NPZ_KEYS, *(["classes"] if "classes" in present else [])]

    return keys


def _channels_first(x: np.ndarray, where: str) -> np.ndarray:
    """N×C×H×W from N×H×W (grayscale), N×H×W×C (the documented layout) or N×C×H×W (how torch users save).

    Tiny images can fit both readings (N×3×4×4: 3-channel 4×4, or 4-channel 3×4). Then the reading whose
    images are square wins, then the one with more pixels, then N×H×W×C; so N×3×4×4 and N×1×2×2 are
    channels-first, N×4×4×3 channels-last."""
    if x.ndim == 3:
        return x[:, None]
    _, a, b, c = x.shape
    readings = [(b, c, True)] * (a in CHANNELS) + [(a, b, False)] * (c in CHANNELS)  # (H, W, channels first)
    if not readings:
        raise DataError(f"{where} has shape {x.shape}: neither N×H×W×C nor N×C×H×W with C = 1 to {max(CHANNELS)} "
                        "channels. Save grayscale images as N×H×W and colour ones as N×H×W×3 (when both readings "
                        "fit, nas takes the one with square images, then the larger, then N×H×W×C).")
    _, _, first = max(readings, key=lambda r: (r[0] == r[1], r[0] * r[1], not r[2]))
    return x if first else x.transpose(0, 3, 1, 2)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
FOLDER_TEST_EVERY = 6  # a folder without train/ and test/: every 6th image of each class is a test image


def read_folder(root: Path) -> Arrays:
    """`root/CLASS/*.png` (every 6th image of each class, by name, is held out as the test set), or
    `root/train/CLASS/*` and `root/test/CLASS/*`. All images must have one size; colour if any is."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _class_files(root / "train"), _class_files(root / "test")
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise DataError(f"{root / 'test'}: classes {', '.join(unknown)} have no training images in {root / 'train'}.")
        classes = sorted(train)
    else:
        files = _class_files(root)
        classes = sorted(files)
        train = {c: [f for i, f in enumerate(fs) if i % FOLDER_TEST_EVERY] for c, fs in files.items()}
        test = {c: fs[::FOLDER_TEST_EVERY] for c, fs in files.items()}
    every = [f for fs in (*train.values(), *test.values()) for f in fs]
    sizes, colour = {}, False
    for f in every:
        with _open_image(f) as im:  # reads the header only
            sizes.setdefault(im.size, f)
            colour |= _has_colour(im)
    if len(sizes) > 1:
        (a, fa), (b, fb) = list(sizes.items())[:2]
        raise DataError(f"{root}: images have different sizes ({fa} is {a[0]}×{a[1]}, {fb} is {b[0]}×{b[1]}); "
                        "resize them to one size first.")
    (w, h), = sizes
    shape = (3 if colour else 1, h, w)
    _check_fits(len(every) * math.prod(shape), f"{root} ({counted(len(every), 'image')} of {w}×{h})")
    arrays = []
    for part in (train, test):
        x = [_image_file(f, shape) for c in classes for f in part.get(c, [])]
        y = [i for i, c in enumerate(classes) for _ in part.get(c, [])]
        arrays += [np.stack(x) if x else np.zeros((0, *shape), np.uint8), np.array(y, np.int64)]
    return Arrays(*arrays, classes=tuple(classes))


def _has_colour(im: Any) -> bool:
    """Whether an image holds colour: by its mode, and for a palette image (GIF, PNG-8) by the palette entries
    its first frame uses (the frame nas reads), since a grey image saved with a palette is still grey."""
    if im.mode == "P":
        palette = np.array(im.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
        try:
            palette = palette[np.unique(np.asarray(im))]
        except (OSError, IndexError):  # broken pixel data: reported when the image is read; judge the whole palette
            pass
        return bool((palette != palette[:, :1]).any())
    return im.mode not in _GRAY_MODES


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name (the folder's name as text, see files.name_text) -> its image files, sorted by name."""
    dirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    found = {name_text(d.name): sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for d in dirs}
    if len(found) < len(dirs):
        raise DataError(f"{folder}: two class folders have the same name once their non-UTF-8 bytes are written as "
                        "\\xNN; rename one of them.")
    found = {c: fs for c, fs in found.items() if fs}
    if len(found) < 2:
        raise DataError(f"{folder}: expected one sub-folder of images per class (at least two classes, images ending "
                        f"in {', '.join(IMAGE_SUFFIXES)}), found {len(found)} with images.")
    return found


def _checked(x: np.ndarray, y: np.ndarray, x_where: str, y_where: str) -> tuple[np.ndarray, np.ndarray]:
    """N×C×H×W uint8 and int64 arrays, after checking that images and labels agree.

    Labels are checked before the cast to int64, which would turn unsigned 64-bit ones negative."""
    if x.ndim == 3:
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{x_where} has {counted(len(x), 'image')} but {y_where} has {counted(len(y), 'label')}; "
                        "they must match.")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{y_where}: labels must be 0, 1, 2, ... but the smallest is {y.min()}.")
    if len(y) and int(y.max()) >= MAX_CLASSES:
        raise DataError(f"{y_where}: labels must be class numbers 0, 1, 2, ... (at most {MAX_CLASSES:,} classes), "
                        f"but the largest is {y.max()}. Number the classes from 0.")
    return np.ascontiguousarray(x), y.astype(np.int64)


def read_images(paths: list[Path], shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray]:
    """Images to classify, as (names, uint8 N×C×H×W) in the model's input `shape`.

    PNG/JPG files are converted to the model's channels (gray, gray+alpha, RGB, RGBA for C = 1 to 4) and
    resized to H×W if they differ; an `.npz` contributes its `x` (or `x_test`, or only) array of uint8
    images, N×H×W or N×H×W×C.
    """
    names, images = [], []
    for path in paths:
        if path.suffix.lower() == ".npz":
            x = _npz_images(path)
            names += [f"{path}[{i}]" for i in range(len(x))]
            images += list(x)
            continue
        names.append(str(path))
        images.append(_image_file(path, shape))
    if not images:
        raise DataError("no images given: pass PNG/JPG files or an .npz of uint8 images.")
    for name, image in zip(names, images):
        if image.shape != shape:
            raise DataError(f"{name}: the images are {'×'.join(map(str, image.shape))} (C×H×W) but the model takes "
                            f"{'×'.join(map(str, shape))}; convert them to that size and number of channels.")
    return names, np.stack(images)


def _image_file(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as C×H×W uint8 in `shape`: converted to its channels, resized to its size."""
    from PIL import Image

    with _open_image(path) as im:
        try:
            if im.mode.startswith("I;16"):  # 16-bit grayscale: scale to 8 bits (convert("L") would clip at 255)
                im = Image.fromarray(((np.asarray(im).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
            elif im.mode in ("I", "F"):
                raise DataError(f"{path}: its pixels are 32-bit {'integers' if im.mode == 'I' else 'floats'}, whose range "
                                "nas cannot know; save it with 8 or 16 bits per channel.")
            im = im.convert(_MODES[shape[0]])
            if im.size != (shape[2], shape[1]):
                im = im.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        except OSError as e:  # truncated or corrupt pixel data, found only when decoding
            raise DataError(f"{path}: not an image PIL can read ({e}); pass PNG or JPG files, or an .npz.") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _open_image(path: Path) -> Any:
    """PIL's image of `path` with only its header read, refused if decoding it would take too much memory."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    check_readable_file(path, "an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file.") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: {e}; nas reads images of at most {MAX_PIXELS:,} pixels.") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # PIL's parsers raise all of these
        raise DataError(f"{path}: not an image PIL can read ({e}); pass PNG or JPG files, or an .npz.") from e
    if im.size[0] * im.size[1] > MAX_PIXELS:
        im.close()
        raise DataError(f"{path}: the image is {im.size[0]}×{im.size[1]} pixels, over nas's limit of {MAX_PIXELS:,}; "
                        "resize it first.")
    return im


def _npz_images(path: Path) -> np.ndarray:
    def keys(present: list[str]) -> list[str]:
        key = next((k for k in ("x", "x_test") if k in present), present[0] if len(present) == 1 else None)
        if key is None:
            raise DataError(f"{path}: which array holds the images? Name it x (it has {', '.join(present) or 'none'}).")
        return [key]

    key, x = next(iter(_npz_arrays(path, keys).items()))
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{path}:{key} is {x.dtype} with shape {x.shape}; expected uint8 images N×H×W or N×H×W×C.")
    return _channels_first(x, f"{path}:{key}")


def _check_fits(n_bytes: int, what: str) -> None:
    """Refuse data that would not fit in this machine's available memory, before reading it."""
    available = available_memory()
    if available is None and n_bytes > ASSUMED_MEMORY:
        raise DataError(f"{what} would take {n_bytes / 2**30:.3g} GiB in memory, but {UNKNOWN_MEMORY}; the file is "
                        "corrupt or too large for this machine.")
    if available is not None and n_bytes > available:
        raise DataError(f"{what} would take {n_bytes / 2**30:.3g} GiB in memory, but only {available / 2**30:.3g} "
                        "GiB are available; the file is corrupt or too large for this machine.")
