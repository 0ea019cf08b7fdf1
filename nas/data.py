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
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nas.errors import NasError

SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)


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
    """A named dataset (fashion-mnist, mnist, kmnist, cifar10), an `.npz` file or an image folder."""
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
        return ds
    path = Path(name)
    if path.suffix == ".npz" or path.is_file():
        return _read_npz(path)
    if path.is_dir():
        return _read_folder(path)
    raise DataError(
        f"unknown dataset {name!r}: use one of {', '.join(NAMED)}, the path of an .npz file holding "
        "x_train, y_train, x_test, y_test, or a folder of images in class sub-folders."
    )


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
    take = subset / len(perm) if subset and subset < len(perm) else 1.0
    train_idx, val_idx = [], []
    for c in range(ds.n_classes):
        idx = perm[ds.y_train[perm] == c]
        idx = idx[: math.ceil(len(idx) * take)]
        n_val = min(max(1, round(len(idx) * val_fraction)), len(idx) - 1)  # every class in both splits
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    # Shuffle across classes so that a slice of either split is not one class.
    train_idx, val_idx = (torch.cat(i)[torch.randperm(sum(map(len, i)), generator=g)] for i in (train_idx, val_idx))
    return Split(ds.x_train[train_idx], ds.y_train[train_idx]), Split(ds.x_train[val_idx], ds.y_train[val_idx])


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (what the model's Normalize uses)."""
    x = x.transpose(0, 1).reshape(x.shape[1], -1).double().div_(255)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-6).tolist()


def full_train(ds: Dataset) -> Split:
    return Split(ds.x_train, ds.y_train)


def test_split(ds: Dataset) -> Split:
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
    """`path` or `path.gz`, whichever exists."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
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
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        if name == "cifar10":
            archive = tmp / "cifar.tar.gz"
            _get(url, archive)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / "cifar-10-batches-bin").rename(target)
            return
        (tmp / "files").mkdir()
        for f in _IDX_FILES:
            _get(url + f + ".gz", tmp / "files" / (f + ".gz"))
        (tmp / "files").rename(target)


def _get(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=20) as r, open(dest, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)


# ---------------------------------------------------------------------------------------------
# Reading the on-disk formats


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (raw or gzip, whatever its gzip header says) as a uint8 array."""
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read it ({e}); the file is corrupt or truncated. Delete it and get it again.")
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'}, expected 0000080N). "
            "Check that the file is one of the dataset's IDX files."
        )
    n_dims = data[3]
    dims = struct.unpack(f">{n_dims}I", data[4 : 4 + 4 * n_dims])
    expected = math.prod(dims)
    if len(data) - 4 - 4 * n_dims != expected:
        raise DataError(
            f"{path}: header says {'×'.join(map(str, dims))} = {expected} bytes, the file holds "
            f"{len(data) - 4 - 4 * n_dims}; it is truncated or corrupt. Delete it and get it again."
        )
    return np.frombuffer(bytearray(data), np.uint8, offset=4 + 4 * n_dims).reshape(dims)  # writable for torch


def _read_idx_set(folder: Path) -> tuple[torch.Tensor, ...]:
    out = []
    for images, labels in ((_IDX_FILES[0], _IDX_FILES[1]), (_IDX_FILES[2], _IDX_FILES[3])):
        x, y = read_idx(_existing(folder / images)), read_idx(_existing(folder / labels))
        out += _checked(x, y, f"{folder}/{images}", f"{folder}/{labels}")
    return tuple(out)


def _read_cifar(folder: Path) -> tuple[torch.Tensor, ...]:
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


def _read_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise DataError(
                    f"{path}: missing {', '.join(missing)}; an .npz dataset holds x_train, y_train, x_test, y_test "
                    f"(it has {', '.join(f.files) or 'nothing'})."
                )
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            names = [str(c) for c in f["classes"]] if "classes" in f else None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Pass an existing .npz or a dataset name ({', '.join(NAMED)}).")
    except (OSError, ValueError, zlib.error, EOFError) as e:
        raise DataError(f"{path}: cannot read it as .npz ({e}). Save it with numpy.savez(x_train=..., ...).")
    tensors = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise DataError(
                f"{path}: x_{split} is {x.dtype} with shape {x.shape}; expected uint8 images N×H×W (grayscale) "
                "or N×H×W×C (colour). Convert with (x * 255).astype(numpy.uint8) if they are floats in [0, 1]."
            )
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise DataError(f"{path}: y_{split} is {y.dtype} with shape {y.shape}; expected integer class labels, shape N.")
        tensors += _checked(x, y, f"{path}:x_{split}", f"{path}:y_{split}")
    n_classes = int(max(tensors[1].max(), tensors[3].max())) + 1
    if tensors[0].shape[1:] != tensors[2].shape[1:]:
        raise DataError(f"{path}: train images are {tuple(tensors[0].shape[1:])}, test images {tuple(tensors[2].shape[1:])}; they must match.")
    if names is not None and len(names) != n_classes:
        raise DataError(f"{path}: 'classes' names {len(names)} classes but the labels use {n_classes}.")
    return Dataset(str(path), *tensors, classes=tuple(names or (str(i) for i in range(n_classes))))


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
    from PIL import Image

    every = [f for fs in (*train.values(), *test.values()) for f in fs]
    sizes, colour = {}, False
    for f in every:
        try:
            with Image.open(f) as im:  # reads the header only
                sizes.setdefault(im.size, f)
                colour |= im.mode not in ("1", "L", "LA", "I", "I;16", "F")
        except OSError as e:
            raise DataError(f"{f}: not an image PIL can read ({e}); remove it or convert it.")
    if len(sizes) > 1:
        (a, fa), (b, fb) = list(sizes.items())[:2]
        raise DataError(f"{root}: images have different sizes ({fa} is {a[0]}×{a[1]}, {fb} is {b[0]}×{b[1]}); "
                        "resize them to one size first.")
    (w, h), = sizes
    shape = (3 if colour else 1, h, w)
    tensors = []
    for part in (train, test):
        x = [_image_file(f, shape) for c in classes for f in part.get(c, [])]
        y = [i for i, c in enumerate(classes) for _ in part.get(c, [])]
        tensors += [torch.from_numpy(np.stack(x)) if x else torch.zeros((0, *shape), dtype=torch.uint8),
                    torch.tensor(y, dtype=torch.int64)]
    return Dataset(str(root), *tensors, classes=tuple(classes))


def _class_files(folder: Path) -> dict[str, list[Path]]:
    found = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
             for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    found = {c: fs for c, fs in found.items() if fs}
    if len(found) < 2:
        raise DataError(f"{folder}: expected one sub-folder of images per class (at least two classes, images ending "
                        f"in {', '.join(IMAGE_SUFFIXES)}), found {len(found)} with images.")
    return found


def _checked(x: np.ndarray, y: np.ndarray, x_where: str, y_where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """N×C×H×W uint8 and int64 tensors, after checking that images and labels agree."""
    if x.ndim == 3:
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{x_where} has {len(x)} images but {y_where} has {len(y)} labels; they must match.")
    if len(y) and y.min() < 0:
        raise DataError(f"{y_where}: labels must be 0, 1, 2, ... but the smallest is {y.min()}.")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


def read_images(paths: list[Path], shape: tuple[int, int, int]) -> tuple[list[str], torch.Tensor]:
    """Images to classify, as (names, uint8 N×C×H×W) in the model's input `shape`.

    PNG/JPG files are converted to grayscale or RGB to match C and resized to H×W if they differ; an
    `.npz` contributes its `x` (or `x_test`, or only) array of uint8 images, N×H×W or N×H×W×C.
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
    x = torch.from_numpy(np.stack([i if i.ndim == 3 else i[None] for i in images]))
    if tuple(x.shape[1:]) != shape:
        raise DataError(f"the images are {'×'.join(map(str, x.shape[1:]))} (C×H×W) but the model takes "
                        f"{'×'.join(map(str, shape))}; convert them to that size and number of channels.")
    return names, x


def _image_file(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if shape[0] == 1 else "RGB")
            if im.size != (shape[2], shape[1]):
                im = im.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not an image PIL can read ({e}); pass PNG or JPG files, or an .npz.")
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _npz_images(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as f:
            key = next((k for k in ("x", "x_test") if k in f), f.files[0] if len(f.files) == 1 else None)
            if key is None:
                raise DataError(f"{path}: which array holds the images? Name it x (it has {', '.join(f.files)}).")
            x = f[key]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.")
    except (OSError, ValueError, zlib.error, EOFError) as e:
        raise DataError(f"{path}: cannot read it as .npz ({e}).")
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{path}:{key} is {x.dtype} with shape {x.shape}; expected uint8 images N×H×W or N×H×W×C.")
    return x if x.ndim == 3 else x.transpose(0, 3, 1, 2)
