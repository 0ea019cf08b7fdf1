"""Datasets -> uint8 tensors (N×C×H×W) and int64 labels; seeded stratified splits; subsets.

Named datasets are looked up in order: `data_dir`, `$NAS_DATA_DIR`, the user cache, the system
locations where distributions install them (Debian's `dataset-fashion-mnist` puts the IDX gz files
in /usr/share/datasets/fashion-mnist/), then a download into the user cache. Any `.npz` with
`x_train, y_train, x_test, y_test` works too. Nothing here unpickles a file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import shutil
import tarfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nas.errors import NasError
from nas.files import check_readable_file, name_text, new_folder_beside
from nas.names import counted

SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CHANNELS = (1, 2, 3, 4)  # image channels an array may have: gray, gray+alpha, RGB, RGBA
MAX_CLASSES = 65_536
MAX_PIXELS = 4096 * 4096  # per image: a larger one is a mistake or a decompression bomb
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # PIL's mode for images of C channels
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes without colour


class DataError(NasError):
    """A dataset that cannot be found or read: the message says which file and what to do."""


@dataclass(frozen=True)
class _Named:
    title: str
    classes: tuple[str, ...]
    folders: tuple[str, ...]  # sub-folders of a search directory that may hold the files
    urls: tuple[str, ...]
    shape: tuple[int, int, int] = (1, 28, 28)
    debian: str | None = None


NAMED = {
    "fashion-mnist": _Named(
        "Fashion-MNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        debian="dataset-fashion-mnist",
    ),
    "mnist": _Named("MNIST", tuple("0123456789"), ("mnist", "MNIST/raw"), ("https://ossci-datasets.s3.amazonaws.com/mnist/",)),
    "kmnist": _Named(
        "Kuzushiji-MNIST",
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        ("kmnist", "KMNIST/raw"),
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
    "cifar10": _Named(
        "CIFAR-10",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        ("cifar10/cifar-10-batches-bin", "cifar-10-batches-bin"),
        ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
        shape=(3, 32, 32),
    ),
}


@dataclass(frozen=True)
class Dataset:
    """A dataset as tensors: uint8 images N×C×H×W and int64 labels, train and test, with class names."""

    name: str
    x_train: torch.Tensor  # uint8, N×C×H×W
    y_train: torch.Tensor  # int64, N
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Split:
    """Images and labels of one part of a dataset, on whatever device they were moved to."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return len(self.y)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """A named dataset (fashion-mnist, mnist, kmnist, cifar10), an `.npz` file or an image folder.

    Whatever the source, the result has at least two classes, labels 0..K-1 each with a training
    image, and non-empty images; anything else is a DataError that says which file and what to do."""
    if name in NAMED:
        folder = _find(name, data_dir) or _download(name, data_dir)
        reader = _read_cifar if name == "cifar10" else _read_idx_set
        ds = Dataset(name, *reader(folder), classes=NAMED[name].classes)
        top = int(max(ds.y_train.max(), ds.y_test.max()))
        if top >= ds.n_classes or ds.input_shape != NAMED[name].shape:
            raise DataError(
                f"{folder}: holds images of shape {ds.input_shape} with labels up to {top}, but {name} has "
                f"{NAMED[name].shape} images and {ds.n_classes} classes. Get the dataset's files again."
            )
        return _validated(ds, str(folder))
    path = Path(name)
    if path.is_dir():
        return _validated(_read_folder(path), str(path))
    if path.suffix == ".npz" or path.exists():  # a FIFO or a device too: the reader refuses it by name
        return _validated(_read_npz(path), str(path))
    raise DataError(
        f"unknown dataset {name!r}: use one of {', '.join(NAMED)}, the path of an .npz file holding "
        "x_train, y_train, x_test, y_test, or a folder of images in class sub-folders."
    )


def dataset_inputs(name: str, data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """What `load_dataset(name, data_dir)` reads, named for `files.check_not_input`: an .npz file, an image
    folder, or a named dataset's files where they are found (none before it is downloaded)."""
    if name in NAMED:
        folder = _find(name, data_dir)
        files = _CIFAR_FILES if name == "cifar10" else _IDX_FILES
        return [(f"the {name} file", _existing(folder / f)) for f in files] if folder else []
    path = Path(name)
    return [(f"the dataset {'folder' if path.is_dir() else 'file'}", path)] if path.exists() else []


def _validated(ds: Dataset, where: str) -> Dataset:
    """`ds` if a classifier can be trained and tested on it; else a DataError naming what is missing."""
    for split, x in (("training", ds.x_train), ("test", ds.x_test)):
        if len(x) == 0:
            raise DataError(f"{where}: the {split} set holds no images; a dataset needs both training and test images.")
    if 0 in ds.input_shape:
        raise DataError(f"{where}: images have shape C×H×W = {'×'.join(map(str, ds.input_shape))}; every side must "
                        "be at least 1.")
    if ds.n_classes < 2:
        raise DataError(f"{where}: only one class ({ds.classes[0]!r}); a classifier needs at least two.")
    counts = torch.bincount(ds.y_train, minlength=ds.n_classes).tolist()
    empty = [ds.classes[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(
            f"{where}: class{'es' * (len(empty) > 1)} {', '.join(map(repr, empty[:10]))}"
            f"{', …' if len(empty) > 10 else ''} {'have' if len(empty) > 1 else 'has'} no training images (labels "
            f"run 0..{ds.n_classes - 1}); number the classes 0, 1, 2, ... without gaps, each with training images."
        )
    return ds


def dataset_shape(name: str, data_dir: str | Path | None = None) -> tuple[tuple[int, int, int], int]:
    """(input shape, class count) of a dataset, without reading a named one."""
    if name in NAMED:
        return NAMED[name].shape, len(NAMED[name].classes)
    ds = load_dataset(name, data_dir)
    return ds.input_shape, ds.n_classes


def split_train_val(
    ds: Dataset, val_fraction: float, seed: int, subset: int | None = None
) -> tuple[Split, Split]:
    """Seeded, stratified train/validation split of the training set (optionally of a subset of it)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds.y_train), generator=g)
    train_idx, val_idx = [], []
    for c, (n_kept, n_val) in enumerate(_split_counts(ds, val_fraction, subset)):
        idx = perm[ds.y_train[perm] == c][:n_kept]
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    # Shuffle across classes so that a slice of either split is not one class.
    train_idx, val_idx = (torch.cat(i)[torch.randperm(sum(map(len, i)), generator=g)] for i in (train_idx, val_idx))
    return Split(ds.x_train[train_idx], ds.y_train[train_idx]), Split(ds.x_train[val_idx], ds.y_train[val_idx])


def split_sizes(ds: Dataset, val_fraction: float, subset: int | None = None) -> tuple[int, int]:
    """(training, validation) image counts of `split_train_val`, without making it; errors as it would."""
    counts = _split_counts(ds, val_fraction, subset)
    return sum(k - v for k, v in counts), sum(v for _, v in counts)


def _split_counts(ds: Dataset, val_fraction: float, subset: int | None) -> list[tuple[int, int]]:
    """Per class: (images kept, of which validation); a class of two or more images keeps at least one
    of each, a class of one image only trains. Refused only when nothing would be left to validate on."""
    per_class = torch.bincount(ds.y_train, minlength=ds.n_classes).tolist()
    take = subset / len(ds.y_train) if subset and subset < len(ds.y_train) else 1.0
    out = []
    for n in per_class:
        kept = math.ceil(n * take)
        out.append((kept, min(max(1, round(kept * val_fraction)), max(kept - 1, 0))))
    if not any(n_val for _, n_val in out):
        most = max(per_class)
        fix = ("Add images: a class needs 2 or more." if most < 2 else
               f"Use a --subset of at least {len(ds.y_train) // most + 1}, or none.")  # ceil(most*take) >= 2
        raise DataError(
            f"{ds.name}: every class has at most 1 training image{f' in the --subset {subset}' if take < 1 else ''}, "
            f"so none is left to validate on; a search needs a class of at least 2 images, one to train on and one "
            f"to validate. {fix}"
        )
    return out


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (what the model's Normalize uses)."""
    x = x.transpose(0, 1).reshape(x.shape[1], -1).double().div_(255)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-6).tolist()


def full_train(ds: Dataset) -> Split:
    """The whole training set, to train a final model on."""
    return Split(ds.x_train, ds.y_train)


def test_split(ds: Dataset) -> Split:
    """The test set: scored only by final models, never by the search."""
    return Split(ds.x_test, ds.y_test)


# ---------------------------------------------------------------------------------------------
# Finding and downloading


def _search_dirs(data_dir: str | Path | None) -> list[Path]:
    dirs = [Path(d) for d in (data_dir, os.environ.get("NAS_DATA_DIR")) if d]
    return dirs + [_cache_dir(), *SYSTEM_DIRS]


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nas"


def _candidates(name: str, data_dir: str | Path | None) -> list[Path]:
    out = [Path(data_dir)] if data_dir else []  # --data-dir may point straight at the files
    return out + [d / sub for d in _search_dirs(data_dir) for sub in NAMED[name].folders]


def _find(name: str, data_dir: str | Path | None) -> Path | None:
    files = _CIFAR_FILES if name == "cifar10" else _IDX_FILES
    for folder in _candidates(name, data_dir):
        if all(_existing(folder / f) for f in files):
            return folder
    return None


def _existing(path: Path) -> Path | None:
    """`path` or `path.gz`, whichever exists (a pipe or device too, for the reader to refuse by name)."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.exists() and not p.is_dir():
            return p
    return None


def _download(name: str, data_dir: str | Path | None) -> Path:
    info = NAMED[name]
    target = _cache_dir() / info.folders[0]
    error = "downloads are off (NAS_OFFLINE is set)"
    if not os.environ.get("NAS_OFFLINE"):
        for url in info.urls:
            try:
                _fetch(name, url, target)
                return target
            except OSError as e:  # URLError, timeouts, HTTP errors and disk errors are all OSErrors
                error = f"downloading from {url} failed: {e}"
    looked = ", ".join(str(p) for p in _candidates(name, data_dir))
    debian = (
        f"on Debian or Ubuntu run `sudo apt-get install {info.debian}` (it installs to "
        f"/usr/share/datasets/{name}/); " if info.debian else ""
    )
    files = "cifar-10-binary.tar.gz, unpacked" if name == "cifar10" else ", ".join(f + ".gz" for f in _IDX_FILES)
    raise DataError(
        f"{info.title} was not found (looked in {looked}) and {error}. Get it one of these ways: {debian}"
        f"or download {files} from {info.urls[0]} into a folder and pass --data-dir FOLDER (or set NAS_DATA_DIR); "
        "or pass any .npz file holding x_train, y_train, x_test, y_test with --dataset FILE.npz."
    )


def _fetch(name: str, url: str, target: Path) -> None:
    """Download into a temporary folder beside `target`, then rename, so nothing is half-written."""
    tmp = new_folder_beside(target)
    try:
        if name == "cifar10":
            archive = tmp / "cifar.tar.gz"
            _get(url, archive)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / "cifar-10-batches-bin").rename(target)
            return
        for f in _IDX_FILES:
            _get(url + f + ".gz", tmp / (f + ".gz"))
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _get(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=20) as r, open(dest, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)


# ---------------------------------------------------------------------------------------------
# Reading the on-disk formats


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


def _read_idx_set(folder: Path) -> tuple[torch.Tensor, ...]:
    out = []
    for images, labels in ((_IDX_FILES[0], _IDX_FILES[1]), (_IDX_FILES[2], _IDX_FILES[3])):
        x, y = read_idx(_existing(folder / images), 3), read_idx(_existing(folder / labels), 1)
        out += _checked(x, y, f"{folder}/{images}", f"{folder}/{labels}")
    return tuple(out)


def _read_cifar(folder: Path) -> tuple[torch.Tensor, ...]:
    for f in _CIFAR_FILES:
        check_readable_file(folder / f, "a CIFAR-10 batch")
    _check_fits(sum((folder / f).stat().st_size for f in _CIFAR_FILES), str(folder))
    parts = []
    for f in _CIFAR_FILES:
        raw = np.fromfile(folder / f, np.uint8)
        if raw.size % 3073:
            raise DataError(f"{folder / f}: size {raw.size} is not a multiple of 3073-byte CIFAR records; get it again.")
        parts.append(raw.reshape(-1, 3073))
    train, test = np.concatenate(parts[:-1]), parts[-1]
    return tuple(
        t for a in (train, test) for t in _checked(a[:, 1:].reshape(-1, 3, 32, 32), a[:, 0], str(folder), str(folder))
    )


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> Dataset:
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
    return Dataset(str(path), *tensors, classes=tuple(names or (str(i) for i in range(n_classes))))


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
        raise DataError(f"{path}: no such file. Pass an existing .npz or a dataset name ({', '.join(NAMED)}).") from e
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


def _read_folder(root: Path) -> Dataset:
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
    tensors = []
    for part in (train, test):
        x = [_image_file(f, shape) for c in classes for f in part.get(c, [])]
        y = [i for i, c in enumerate(classes) for _ in part.get(c, [])]
        tensors += [torch.from_numpy(np.stack(x)) if x else torch.zeros((0, *shape), dtype=torch.uint8),
                    torch.tensor(y, dtype=torch.int64)]
    return Dataset(str(root), *tensors, classes=tuple(classes))


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


def _checked(x: np.ndarray, y: np.ndarray, x_where: str, y_where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """N×C×H×W uint8 and int64 tensors, after checking that images and labels agree.

    Labels are checked before the cast to int64, which would turn unsigned 64-bit ones negative."""
    if x.ndim == 3:
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{x_where} has {counted(len(x), 'image')} but {y_where} has {counted(len(y), 'label')}; they must match.")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{y_where}: labels must be 0, 1, 2, ... but the smallest is {y.min()}.")
    if len(y) and int(y.max()) >= MAX_CLASSES:
        raise DataError(f"{y_where}: labels must be class numbers 0, 1, 2, ... (at most {MAX_CLASSES:,} classes), "
                        f"but the largest is {y.max()}. Number the classes from 0.")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def read_images(paths: list[Path], shape: tuple[int, int, int]) -> tuple[list[str], torch.Tensor]:
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
    return names, torch.from_numpy(np.stack(images))


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
    if n_bytes > available:
        raise DataError(f"{what} would take {n_bytes / 2**30:.3g} GiB in memory, but only {available / 2**30:.3g} "
                        "GiB are available; the file is corrupt or too large for this machine.")


def available_memory() -> int:
    """Bytes of memory this machine can still give (MemAvailable on Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 1 << 40
