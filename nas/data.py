"""Datasets -> uint8 tensors (N×C×H×W) and int64 labels; seeded stratified splits and subsets, put on the
training device (`Prepared`).

Named datasets are looked up in order: `data_dir`, `$NAS_DATA_DIR`, the user cache, the system
locations where distributions install them (Debian's `dataset-fashion-mnist` puts the IDX gz files
in /usr/share/datasets/fashion-mnist/), then a download into the user cache. Any `.npz` with
`x_train, y_train, x_test, y_test` works too. The files are read by `formats` (numpy, no torch);
this module checks the whole and makes the tensors.
"""

from __future__ import annotations

import hashlib
import math
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from nas import names
from nas.files import new_folder_beside
from nas.formats import (CIFAR_FILES, IDX_FILES, Arrays, DataError, existing, read_cifar, read_folder, read_idx_set,
                         read_npz)

SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))


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
names.check_registry(NAMED, names.DATASETS, "dataset")


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

    def fingerprint(self) -> str:
        """A hash of the images, labels and class names (train and test): equal data, equal fingerprint,
        wherever it was read from. A study records it, so a resume on changed data is refused."""
        h = hashlib.blake2b(digest_size=16)
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.contiguous().numpy().tobytes())
        h.update("\n".join(self.classes).encode())
        return f"blake2b:{h.hexdigest()}"


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
        reader = read_cifar if name == "cifar10" else read_idx_set
        ds = Dataset(name, *map(torch.from_numpy, reader(folder)), classes=NAMED[name].classes)
        top = int(max(ds.y_train.max(), ds.y_test.max()))
        if top >= ds.n_classes or ds.input_shape != NAMED[name].shape:
            raise DataError(
                f"{folder}: holds images of shape {ds.input_shape} with labels up to {top}, but {name} has "
                f"{NAMED[name].shape} images and {ds.n_classes} classes. Get the dataset's files again."
            )
        return _validated(ds, str(folder))
    path = Path(name)
    if path.is_dir():
        return _validated(_tensors(str(path), read_folder(path)), str(path))
    if path.suffix == ".npz" or path.exists():  # a FIFO or a device too: the reader refuses it by name
        return _validated(_tensors(str(path), read_npz(path)), str(path))
    raise DataError(
        f"unknown dataset {name!r}: use one of {', '.join(NAMED)}, the path of an .npz file holding "
        "x_train, y_train, x_test, y_test, or a folder of images in class sub-folders."
    )


def _tensors(name: str, a: Arrays) -> Dataset:
    return Dataset(name, *(torch.from_numpy(x) for x in (a.x_train, a.y_train, a.x_test, a.y_test)), classes=a.classes)


def dataset_inputs(name: str, data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """What `load_dataset(name, data_dir)` reads, named for `files.check_not_input`: an .npz file, an image
    folder, or a named dataset's files where they are found (none before it is downloaded)."""
    if name in NAMED:
        folder = _find(name, data_dir)
        files = CIFAR_FILES if name == "cifar10" else IDX_FILES
        return [(f"the {name} file", existing(folder / f)) for f in files] if folder else []
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



@dataclass(frozen=True)
class Prepared:
    """A dataset cut for training, already on the training device, with its normalisation.

    A search scores on `val` (taken from the training set) and never sees the test set; a final
    model trains on the whole training set and is scored on `test`."""

    train: Split
    val: Split | None
    test: Split | None
    input_shape: tuple[int, int, int]
    n_classes: int
    mean: list[float]
    std: list[float]

    @property
    def held_out(self) -> Split:
        """What training scores after every epoch: the validation split, or the test set of a final model."""
        return self.val if self.val is not None else self.test


def prepare_search_data(
    ds: Dataset, val_fraction: float, seed: int, device: torch.device, subset: int | None = None
) -> Prepared:
    """The seeded stratified train/val split the search scores on; the test set stays out of it."""
    train, val = split_train_val(ds, val_fraction, seed, subset)
    return Prepared(train.to(device), val.to(device), None, ds.input_shape, ds.n_classes, *channel_stats(train.x))


def prepare_final_data(ds: Dataset, device: torch.device) -> Prepared:
    """The whole training set to train on and the test set to score: for `train` and export."""
    train = full_train(ds)
    return Prepared(train.to(device), None, test_split(ds).to(device), ds.input_shape, ds.n_classes,
                    *channel_stats(train.x))

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
    files = CIFAR_FILES if name == "cifar10" else IDX_FILES
    for folder in _candidates(name, data_dir):
        if all(existing(folder / f) for f in files):
            return folder
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
    files = "cifar-10-binary.tar.gz, unpacked" if name == "cifar10" else ", ".join(f + ".gz" for f in IDX_FILES)
    raise DataError(
        f"{info.title} was not found (looked in {looked}) and {error}. Get it one of these ways: {debian}"
        f"or download {files} from {info.urls[0]} into a folder and pass --data-dir FOLDER (or set NAS_DATA_DIR); "
        "or pass any .npz file holding x_train, y_train, x_test, y_test with --dataset FILE.npz."
    )


def _fetch(name: str, url: str, target: Path) -> None:
    """Download into a temporary folder beside `target`, then rename, so nothing is half-written."""
    with new_folder_beside(target) as tmp:
        if name == "cifar10":
            archive = tmp / "cifar.tar.gz"
            _get(url, archive)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / "cifar-10-batches-bin").rename(target)
            return
        for f in IDX_FILES:
            _get(url + f + ".gz", tmp / (f + ".gz"))
        tmp.rename(target)


def _get(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=20) as r, open(dest, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
