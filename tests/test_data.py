import gzip

import numpy as np
import pytest
import torch

from conftest import make_images, write_idx, write_idx_dataset
from nas import data
from nas.data import DataError, load_dataset, split_train_val


def test_idx_gz_files_load_as_uint8_tensors_with_class_names(idx_dir):
    ds = load_dataset("fashion-mnist", idx_dir)
    assert ds.x_train.shape == (400, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.dtype == torch.int64 and ds.x_test.shape == (100, 1, 28, 28)
    assert ds.classes[0] == "T-shirt/top" and ds.n_classes == 10


def test_raw_idx_files_load_too(tmp_path):
    ds = load_dataset("mnist", write_idx_dataset(tmp_path / "m", gz=False))
    assert ds.x_train.shape == (400, 1, 28, 28) and ds.classes[3] == "3"


def test_lookup_order_data_dir_then_env_then_system(tmp_path, monkeypatch):
    small = write_idx_dataset(tmp_path / "small" / "fashion-mnist", n_train=5)
    big = write_idx_dataset(tmp_path / "big" / "fashion-mnist", n_train=8)
    system = write_idx_dataset(tmp_path / "system" / "fashion-mnist", n_train=3)
    monkeypatch.setattr("nas.data.SYSTEM_DIRS", (tmp_path / "system",))
    assert len(load_dataset("fashion-mnist").y_train) == 30
    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path / "big"))
    assert len(load_dataset("fashion-mnist").y_train) == 80
    assert len(load_dataset("fashion-mnist", small).y_train) == 50
    assert system.exists()


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path)
    msg = str(e.value)
    for hint in ("apt-get install dataset-fashion-mnist", "--data-dir", "NAS_DATA_DIR", ".npz", str(tmp_path)):
        assert hint in msg


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "corrupt or truncated"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + bytes(20))), "not an IDX file"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-5])), "it is truncated or corrupt"),
])
def test_damaged_idx_files_are_reported(tmp_path, damage, message):
    folder = write_idx_dataset(tmp_path / "d")
    damage(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=message):
        load_dataset("fashion-mnist", folder)


def test_image_and_label_counts_must_agree(tmp_path):
    folder = write_idx_dataset(tmp_path / "d")
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="has 400 images but .* has 7 labels"):
        load_dataset("fashion-mnist", folder)


def test_labels_beyond_the_class_count_are_refused(tmp_path):
    folder = write_idx_dataset(tmp_path / "d")
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(100, 12, np.uint8))
    with pytest.raises(DataError, match="labels up to 12"):
        load_dataset("fashion-mnist", folder)


def test_npz_grayscale_and_colour(npz_gray, npz_colour):
    gray, colour = load_dataset(str(npz_gray)), load_dataset(str(npz_colour))
    assert gray.input_shape == (1, 20, 20) and gray.n_classes == 10
    assert colour.input_shape == (3, 24, 24) and colour.x_train.dtype == torch.uint8


@pytest.mark.parametrize("arrays,message", [
    ({"x_train": np.zeros((2, 4, 4), np.uint8)}, "missing y_train, x_test, y_test"),
    ({"x_train": np.zeros((2, 4, 4)), "y_train": np.zeros(2, int), "x_test": np.zeros((2, 4, 4), np.uint8),
      "y_test": np.zeros(2, int)}, "x_train is float64 .* expected uint8 images"),
    ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.zeros((2, 2), int),
      "x_test": np.zeros((2, 4, 4), np.uint8), "y_test": np.zeros(2, int)}, "y_train is int64 with shape \\(2, 2\\)"),
])
def test_bad_npz_files_are_reported(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(str(path))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'fmnist': use one of fashion-mnist, mnist, kmnist, cifar10"):
        load_dataset("fmnist")


def test_split_is_seeded_stratified_disjoint_and_subsettable(idx_dir):
    ds = load_dataset("fashion-mnist", idx_dir)
    train, val = split_train_val(ds, 0.25, seed=1)
    assert len(train) == 300 and len(val) == 100
    assert torch.bincount(val.y, minlength=10).tolist() == [10] * 10
    again, _ = split_train_val(ds, 0.25, seed=1)
    other, _ = split_train_val(ds, 0.25, seed=2)
    assert torch.equal(train.x, again.x) and not torch.equal(train.x, other.x)
    rows = {tuple(r) for r in ds.x_train.flatten(1).tolist()}
    assert len(rows) == 400  # every image distinct, so disjointness can be checked by content
    assert not {tuple(r) for r in train.x.flatten(1).tolist()} & {tuple(r) for r in val.x.flatten(1).tolist()}
    sub_train, sub_val = split_train_val(ds, 0.2, seed=1, subset=100)
    assert len(sub_train) + len(sub_val) == 100 and torch.bincount(sub_val.y).tolist() == [2] * 10


def test_a_class_of_one_image_is_trained_on_and_the_others_still_validate():
    x = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 4, 4).contiguous()
    ds = data.Dataset("tiny", x, torch.tensor([0, 0, 0, 0, 1]), x[:2], torch.tensor([0, 1]), ("a", "b"))
    train, val = split_train_val(ds, 0.25, seed=0)
    assert torch.bincount(train.y, minlength=2).tolist() == [3, 1] and val.y.tolist() == [0]


def test_channel_stats_are_those_of_images_in_unit_range():
    x = torch.tensor(make_images(3, 0)[0])[:, None]
    mean, std = data.channel_stats(x)
    assert mean[0] == pytest.approx(x.double().div(255).mean().item())
    assert std[0] == pytest.approx(x.double().div(255).std().item())


def test_cifar10_binary_batches_load_without_unpickling(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        records = rng.integers(0, 256, size=(4, 3073), dtype=np.uint8)
        records[:, 0] = (np.arange(4) + 4 * i) % 10  # the five training batches hold every class twice
        records.tofile(folder / name)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.classes[0] == "airplane"
    first = np.fromfile(folder / "data_batch_1.bin", np.uint8)[:3073]
    assert ds.y_train[0] == first[0] and ds.x_train[0, 0, 0, :4].tolist() == first[1:5].tolist()


def write_folder(root, x, y, names=("ankle", "bag", "coat", "dress", "pullover", "sandal", "shirt", "sneaker",
                                    "top", "trouser")):
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / names[label] / f"{i:04d}.png")
    return root


def test_an_image_folder_with_class_subfolders_holds_out_every_6th_image_per_class(tmp_path):
    x, y = make_images(12, seed=1)
    ds = load_dataset(str(write_folder(tmp_path / "imgs", x, y)))
    assert ds.classes[:3] == ("ankle", "bag", "coat") and ds.input_shape == (1, 28, 28)
    assert len(ds.y_train) == 100 and len(ds.y_test) == 20  # 12 per class: 10 train, 2 test
    assert torch.bincount(ds.y_test).tolist() == [2] * 10
    first = sorted((tmp_path / "imgs" / "ankle").iterdir())[0]  # held out: index 0 of its class
    assert any(torch.equal(t[0], torch.from_numpy(x[int(first.stem)])) for t in ds.x_test[ds.y_test == 0])


def test_an_image_folder_with_train_and_test_and_colour_images(tmp_path):
    (xt, yt), (xs, ys) = make_images(3, 1, channels=3), make_images(1, 2, channels=3)
    write_folder(tmp_path / "f" / "train", xt, yt)
    write_folder(tmp_path / "f" / "test", xs, ys)
    ds = load_dataset(str(tmp_path / "f"))
    assert ds.x_train.shape == (30, 3, 28, 28) and ds.x_test.shape == (10, 3, 28, 28)
    order = np.argsort(yt, kind="stable")
    assert torch.equal(ds.x_train[0], torch.from_numpy(xt[order[0]]).permute(2, 0, 1))


@pytest.mark.parametrize("damage, words", [
    (lambda r: __import__("PIL.Image").Image.new("L", (20, 20)).save(r / "bag" / "small.png"), "images have different sizes"),
    (lambda r: (r / "bag" / "broken.png").write_text("no"), "broken.png: not an image PIL can read"),
    (lambda r: [__import__("shutil").rmtree(d) for d in r.iterdir() if d.name != "bag"], "at least two classes"),
], ids=["folder: mixed sizes", "folder: unreadable image", "folder: one class"])
def test_a_bad_image_folder_is_a_clear_error(tmp_path, damage, words):
    root = write_folder(tmp_path / "imgs", *make_images(2, seed=1))
    damage(root)
    with pytest.raises(DataError, match=words):
        load_dataset(str(root))


def test_16_bit_png_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's convert("L") clips 16-bit pixels at 255, which made every image white."""
    from PIL import Image

    for c, level in (("dark", 4000), ("light", 60000)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), level, np.uint16)).save(tmp_path / "imgs" / c / f"{i}.png")
    ds = load_dataset(str(tmp_path / "imgs"))
    assert Image.open(tmp_path / "imgs" / "dark" / "0.png").mode.startswith("I;16")
    assert ds.input_shape == (1, 8, 8)
    dark, light = (ds.x_train[ds.y_train == ds.classes.index(c)] for c in ("dark", "light"))
    assert dark.unique().tolist() == [round(4000 * 255 / 65535)] and light.unique().tolist() == [round(60000 * 255 / 65535)]


def test_a_channels_first_npz_is_read_as_channels_first(tmp_path):
    x = np.zeros((6, 3, 10, 12), np.uint8)  # N×C×H×W, as torch users save it
    x[:, 0] = 200
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 0, 0, 1, 1, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert ds.input_shape == (3, 10, 12) and ds.x_train[:, 0].min() == 200 and ds.x_train[:, 1:].max() == 0
    np.savez(tmp_path / "d.npz", x_train=x.transpose(0, 2, 3, 1), y_train=np.array([0, 0, 0, 1, 1, 1]),
             x_test=x[:2].transpose(0, 2, 3, 1), y_test=np.array([0, 1]))
    assert load_dataset(str(tmp_path / "d.npz")).input_shape == (3, 10, 12)  # N×H×W×C gives the same
