"""Data loaders on the real installed data (scripts/install_data.sh), formats on files written here."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from valleys.bench import tokenization
from valleys.bench.data import (
    DatasetMissing,
    ImageSplits,
    TextSplits,
    load_austen,
    load_bbc_news,
    load_cifar,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist_5k,
    load_rotten_tomatoes,
    load_text_file,
    package_dir,
    read_idx,
    sine_regression,
    stratified_split,
)


def _class_counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels).tolist()


def _assert_images(splits: ImageSplits, shape: tuple[int, int, int], num_classes: int) -> None:
    for images, labels in (
        (splits.train_images, splits.train_labels),
        (splits.test_images, splits.test_labels),
    ):
        assert images.dtype == torch.uint8
        assert images.shape[1:] == shape
        assert labels.dtype == torch.int64
        assert labels.shape == (len(images),)
    assert len(splits.classes) == splits.num_classes == num_classes


def _assert_same_images(a: ImageSplits, b: ImageSplits) -> None:
    assert torch.equal(a.train_images, b.train_images)
    assert torch.equal(a.train_labels, b.train_labels)
    assert torch.equal(a.test_images, b.test_images)
    assert torch.equal(a.test_labels, b.test_labels)
    assert a.classes == b.classes


# --- splitting -----------------------------------------------------------------------------------


def test_stratified_split_partitions_each_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, test = stratified_split(labels, 0.2, seed=3)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(100))
    assert _class_counts(labels[test]) == [10, 6, 4]
    again = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert not torch.equal(test, stratified_split(labels, 0.2, seed=4)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(torch.zeros(10, dtype=torch.int64), fraction, seed=0)


def test_splits_reject_inconsistent_tensors() -> None:
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="train_labels"):
        ImageSplits(
            images, torch.zeros(3, dtype=torch.int64), images, torch.zeros(4).long(), ("a",)
        )
    with pytest.raises(ValueError, match="uint8"):
        ImageSplits(images.float(), torch.zeros(4).long(), images, torch.zeros(4).long(), ("a",))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TextSplits(("x",), torch.tensor([1]), ("y",), torch.tensor([0]), ("a",))


# --- IDX and Fashion-MNIST ---------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_read_idx_plain_gzip_and_wide_types(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    wide = np.array([[-70000, 5]], dtype=np.int32)
    (tmp_path / "wide").write_bytes(_idx_bytes(wide, 0x0C))
    for name in ("plain", "packed.gz"):
        assert torch.equal(read_idx(tmp_path / name), torch.from_numpy(images))
    assert read_idx(tmp_path / "wide").tolist() == [[-70000, 5]]
    (tmp_path / "short").write_bytes(_idx_bytes(images, 0x08)[:-1])
    with pytest.raises(ValueError, match="IDX header"):
        read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_fashion_mnist_real() -> None:
    splits = load_fashion_mnist()
    _assert_images(splits, (1, 28, 28), 10)
    assert len(splits.train_images) == 60_000 and len(splits.test_images) == 10_000
    assert _class_counts(splits.train_labels) == [6000] * 10
    assert _class_counts(splits.test_labels) == [1000] * 10
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    assert int(splits.train_images.max()) == 255
    _assert_same_images(splits, load_fashion_mnist("/usr/share/datasets/fashion-mnist"))


def test_fashion_mnist_env_override_and_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VALLEYS_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DatasetMissing, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images, 0x08))
        labels = np.arange(count, dtype=np.uint8)
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(labels, 0x08))
        )
    splits = load_fashion_mnist()
    assert splits.train_images.shape == (6, 1, 28, 28) and splits.test_labels.tolist() == [
        0,
        1,
        2,
        3,
    ]


# --- MNIST 5k and digits -----------------------------------------------------------------------


def test_mnist_5k_real() -> None:
    splits = load_mnist_5k()
    _assert_images(splits, (1, 28, 28), 10)
    assert len(splits.train_images) == 4000 and len(splits.test_images) == 1000
    assert _class_counts(splits.train_labels) == [400] * 10
    assert _class_counts(splits.test_labels) == [100] * 10
    _assert_same_images(splits, load_mnist_5k())
    other = load_mnist_5k(test_fraction=0.5, seed=1)
    assert len(other.test_images) == 2500
    assert _class_counts(torch.cat([other.train_labels, other.test_labels])) == [500] * 10


def test_digits_real() -> None:
    splits = load_digits()
    _assert_images(splits, (1, 8, 8), 10)
    assert len(splits.train_images) + len(splits.test_images) == 1797
    assert int(splits.train_images.max()) == 255 and int(splits.train_images.min()) == 0
    _assert_same_images(splits, load_digits())


def test_missing_package_names_the_pip_command() -> None:
    with pytest.raises(DatasetMissing, match="pip install --no-deps not-here==1"):
        package_dir("valleys_no_such_package", "not-here==1")


# --- CIFAR ---------------------------------------------------------------------------------------


def _cifar_batch(rng: np.random.Generator, count: int, num_classes: int, key: str) -> dict:
    return {
        "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        key: rng.integers(0, num_classes, count).tolist(),
    }


def _write_pickle(path: Path, obj: object) -> None:
    # Protocol 2 is what the published batches use.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def test_cifar10_format(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = [_cifar_batch(rng, 3, 10, "labels") for _ in range(5)]
    for index, batch in enumerate(batches, start=1):
        _write_pickle(folder / f"data_batch_{index}", batch)
    test = _cifar_batch(rng, 4, 10, "labels")
    # Byte-string keys, as a batch re-pickled under Python 3 without decoding has them.
    _write_pickle(folder / "test_batch", {key.encode(): value for key, value in test.items()})
    names = [f"class{i}" for i in range(10)]
    _write_pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})

    splits = load_cifar(tmp_path)
    _assert_images(splits, (3, 32, 32), 10)
    assert splits.classes == tuple(names)
    expected = np.concatenate([batch["data"] for batch in batches]).reshape(-1, 3, 1024)
    # Rows are the red, green and blue planes, each 32×32 row-major.
    assert torch.equal(splits.train_images.reshape(15, 3, 1024), torch.from_numpy(expected))
    assert splits.train_labels.tolist() == [label for batch in batches for label in batch["labels"]]
    assert splits.test_labels.tolist() == test["labels"]
    _assert_same_images(splits, load_cifar(folder))


def test_cifar100_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = _cifar_batch(rng, 6, 100, "fine_labels") | {"coarse_labels": [0] * 6}
    _write_pickle(tmp_path / "train", train)
    _write_pickle(tmp_path / "test", _cifar_batch(rng, 2, 100, "fine_labels"))
    names = [f"fine{i}" for i in range(100)]
    _write_pickle(tmp_path / "meta", {"fine_label_names": names, "coarse_label_names": ["c"] * 20})
    splits = load_cifar(tmp_path, num_classes=100)
    _assert_images(splits, (3, 32, 32), 100)
    assert splits.train_labels.tolist() == train["fine_labels"]
    assert len(splits.test_images) == 2


def test_cifar_rejects_code_in_pickles(tmp_path: Path) -> None:
    _write_pickle(tmp_path / "train", {"data": Path("/"), "fine_labels": []})
    for name in ("test", "meta"):
        _write_pickle(tmp_path / name, {})
    with pytest.raises(pickle.UnpicklingError, match="not data"):
        load_cifar(tmp_path, num_classes=100)


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match=r"cifar-10-python\.tar\.gz"):
        load_cifar(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="10 or 100"):
        load_cifar(tmp_path, num_classes=20)


# --- ImageFolder ---------------------------------------------------------------------------------


def _write_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_split_by_class(tmp_path: Path) -> None:
    for index in range(10):
        _write_image(tmp_path / "cat" / f"{index}.png", (40, 20), (200, 10, 10))
        _write_image(tmp_path / "dog" / f"{index}.jpg", (24, 24), (10, 200, 10))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    splits = load_image_folder(tmp_path, image_size=16, test_fraction=0.2, seed=0)
    _assert_images(splits, (3, 16, 16), 2)
    assert splits.classes == ("cat", "dog")
    assert _class_counts(splits.test_labels) == [2, 2]
    assert _class_counts(splits.train_labels) == [8, 8]
    cats = splits.train_images[splits.train_labels == 0]
    assert torch.all(cats[:, 0] == 200) and torch.all(cats[:, 1] == 10)
    _assert_same_images(splits, load_image_folder(tmp_path, image_size=16))


@pytest.mark.parametrize("held_out", ["val", "test"])
def test_image_folder_train_val_layout(tmp_path: Path, held_out: str) -> None:
    for name in ("a", "b", "c"):
        _write_image(tmp_path / "train" / name / "0.png", (8, 8), (1, 2, 3))
    _write_image(tmp_path / held_out / "b" / "0.png", (8, 8), (1, 2, 3))
    (tmp_path / held_out / "c").mkdir()
    splits = load_image_folder(tmp_path, image_size=8)
    assert splits.classes == ("a", "b", "c")
    assert splits.train_labels.tolist() == [0, 1, 2] and splits.test_labels.tolist() == [1]


def test_image_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="<class>"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetMissing, match="no images"):
        load_image_folder(tmp_path)


# --- text classification ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rotten_tomatoes() -> TextSplits:
    return load_rotten_tomatoes()


def test_rotten_tomatoes_real(rotten_tomatoes: TextSplits) -> None:
    splits = rotten_tomatoes
    assert splits.classes == ("rotten", "fresh")
    assert len(splits.train_texts) + len(splits.test_texts) == 12_808
    assert len(splits.test_texts) == pytest.approx(0.2 * 12_808, abs=2)
    labels = torch.cat([splits.train_labels, splits.test_labels])
    assert labels.float().mean().item() == pytest.approx(0.578, abs=0.001)
    assert splits.train_labels.float().mean().item() == pytest.approx(0.578, abs=0.001)
    assert all(isinstance(text, str) and text for text in splits.train_texts[:100])
    again = load_rotten_tomatoes()
    assert again.test_texts == splits.test_texts
    assert torch.equal(again.test_labels, splits.test_labels)


def test_bbc_news_real() -> None:
    splits = load_bbc_news()
    assert splits.classes == ("business", "entertainment", "politics", "sports", "tech")
    labels = torch.cat([splits.train_labels, splits.test_labels])
    assert len(labels) == len(splits.train_texts) + len(splits.test_texts) == 2225
    assert _class_counts(labels) == [510, 386, 417, 511, 401]
    texts = splits.train_texts + splits.test_texts
    assert not any("\ufffd" in text for text in texts)
    again = load_bbc_news()
    assert again.train_texts == splits.train_texts
    assert torch.equal(again.train_labels, splits.train_labels)


# --- Austen, text files, sine --------------------------------------------------------------------


def test_austen_real() -> None:
    novels = load_austen()
    assert list(novels) == [
        "Sense & Sensibility",
        "Pride & Prejudice",
        "Mansfield Park",
        "Emma",
        "Northanger Abbey",
        "Persuasion",
    ]
    total = "\n".join(novels.values())
    assert 4_000_000 < len(total) < 4_100_000
    assert len(set(total)) == 81 and "£" in total
    assert novels["Emma"].startswith("EMMA\n")
    assert "It is a truth universally acknowledged" in novels["Pride & Prejudice"]


def test_austen_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VALLEYS_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetMissing, match=r"scripts/install_data\.sh.*apt-get download"):
        load_austen()


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "utf8.txt").write_text("Où es-tu?\r\nIci.", encoding="utf-8", newline="")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert load_text_file(tmp_path / "utf8.txt") == "Où es-tu?\r\nIci."
    assert load_text_file(str(tmp_path / "latin1.txt")) == "café"
    with pytest.raises(DatasetMissing, match="plain text"):
        load_text_file(tmp_path / "missing.txt")


def test_sine_regression() -> None:
    data = sine_regression()
    assert data.train_x.shape == data.train_y.shape == (32_800, 1)
    assert data.test_x.shape == data.test_y.shape == (8_200, 1)
    for tensor in (data.train_x, data.train_y, data.test_x, data.test_y):
        assert tensor.dtype == torch.float32
    x = torch.cat([data.train_x, data.test_x])
    assert -10 <= x.min() < -9.9 and 9.9 < x.max() <= 10
    residual = torch.cat([data.train_y, data.test_y]) - torch.sin(x)
    assert residual.std().item() == pytest.approx(0.1, rel=0.03)
    assert torch.equal(sine_regression().test_y, data.test_y)
    assert not torch.equal(sine_regression(seed=1).test_y, data.test_y)
    clean = sine_regression(n=100, noise=0.0)
    torch.testing.assert_close(clean.train_y, torch.sin(clean.train_x))
    assert len(clean.test_x) == 20


# --- tokenisation --------------------------------------------------------------------------------


def test_wordpiece_round_trip(rotten_tomatoes: TextSplits) -> None:
    tokenizer = tokenization.train_wordpiece(rotten_tomatoes.train_texts, vocab_size=2000)
    assert tokenizer.get_vocab_size() == 2000
    assert [tokenizer.token_to_id(token) for token in tokenization.SPECIAL_TOKENS] == [
        0,
        1,
        2,
        3,
        4,
    ]
    texts = ["A gorgeous, witty, seductive movie.", "dull", rotten_tomatoes.test_texts[0] * 20]
    input_ids, mask = tokenization.encode_batch(tokenizer, texts, max_length=32)
    assert input_ids.shape == mask.shape == (3, 32) and input_ids.dtype == torch.int64
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert (input_ids[:, 0] == cls).all()
    assert input_ids[1, :3].tolist() == [cls, tokenizer.token_to_id("dull"), sep]
    assert mask[1].tolist() == [1, 1, 1] + [0] * 29 and (input_ids[1, 3:] == 0).all()
    assert input_ids[2, -1] == sep and mask[2].all()
    decoded = tokenizer.decode(input_ids[0].tolist())
    assert decoded.replace(" ", "") == texts[0].lower().replace(" ", "")
    assert tokenizer.truncation is None and tokenizer.padding is None
    empty_ids, _ = tokenization.encode_batch(tokenizer, [], max_length=8)
    assert empty_ids.shape == (0, 8)


def test_char_round_trip() -> None:
    text = load_austen()["Persuasion"]
    vocab = tokenization.char_vocabulary(text)
    ids = tokenization.encode_chars(text, vocab)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert int(ids.max()) == len(vocab) - 1
    assert tokenization.decode_chars(ids, vocab) == text
    shuffled = tuple(reversed(vocab))
    assert (
        tokenization.decode_chars(tokenization.encode_chars(text[:500], shuffled), shuffled)
        == (text[:500])
    )
    with pytest.raises(ValueError, match="'é' at position 2"):
        tokenization.encode_chars("abé", ("a", "b"))
    assert tokenization.encode_chars("", ("a",)).shape == (0,)
