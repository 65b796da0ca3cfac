"""Data sets: the embedded defaults, the CIFAR-10 / MNIST readers on tiny files written in the real
formats, the clear errors for missing or corrupt data, and every dataset config."""
import gzip
import pickle
import socket
import zlib
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from adaprec.data import DataBundle, DataError, load_cifar10, load_digits, load_mnist, load_text
from adaprec.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from adaprec.data.corpus import help_topics, split_by_document, stdlib_documents
from adaprec.data.mnist import MNIST_MEAN, MNIST_STD

from tests.conftest import CONF


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loaders must never download: any socket use fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a data loader tried to open a network connection")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_default_shapes(digits):
    assert digits.task == "classification" and digits.num_classes == 10
    assert digits.train_x.shape[1:] == (3, 16, 16) and digits.train_x.dtype == torch.float32
    assert len(digits.train_x) + len(digits.val_x) == 1797
    assert len(digits.val_x) == pytest.approx(0.2 * 1797, abs=10)
    assert digits.train_y.dtype == torch.int64 and set(digits.train_y.tolist()) == set(range(10))
    # the grey channel is replicated, not three different images
    torch.testing.assert_close(digits.train_x[:, 0], digits.train_x[:, 2], rtol=0, atol=0)


def test_digits_normalized_with_train_statistics(digits):
    assert digits.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert digits.train_x.std().item() == pytest.approx(1.0, abs=1e-5)
    assert abs(digits.val_x.mean().item()) < 0.1  # same transform, different images


def test_digits_split_is_stratified_and_fixed_by_seed(digits):
    again, other = load_digits(), load_digits(seed=1)
    torch.testing.assert_close(again.val_x, digits.val_x, rtol=0, atol=0)
    assert not torch.equal(other.val_x, digits.val_x)
    train_counts = torch.bincount(digits.train_y, minlength=10).float()
    val_counts = torch.bincount(digits.val_y, minlength=10).float()
    share = val_counts / (train_counts + val_counts)
    assert ((share - 0.2).abs() < 0.01).all()


def test_the_bundled_digits_file_is_what_scikit_learn_loads():
    from sklearn.datasets import load_digits as sk_digits

    from adaprec.data._common import bundled_digits

    pixels, labels = bundled_digits()
    raw = sk_digits()
    assert torch.equal(pixels, torch.tensor(raw.data, dtype=torch.float32))
    assert torch.equal(labels, torch.tensor(raw.target, dtype=torch.long))


def test_digits_native_size_is_the_raw_data_normalized():
    from sklearn.datasets import load_digits as sk_digits

    from adaprec.data._common import stratified_split

    b = load_digits(image_size=8, channels=1, val_fraction=0.5, seed=3)
    raw = sk_digits()
    x = torch.tensor(raw.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    train, val = stratified_split(torch.tensor(raw.target), 0.5, 3)
    mean, std = x[train].mean(), x[train].std()
    torch.testing.assert_close(b.train_x, (x[train] - mean) / std)
    torch.testing.assert_close(b.val_x, (x[val] - mean) / std)
    assert b.val_y.tolist() == raw.target[val.numpy()].tolist()


def test_digits_flatten_and_resize():
    b = load_digits(image_size=12, channels=1, flatten=True)
    assert b.train_x.shape[1:] == (144,) and b.input_shape == (144,)


# ---------------------------------------------------------------- text

def test_text_on_a_file(tmp_path):
    text = "héllo wörld, " * 40
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    b = load_text(path=str(f), block_size=8, val_fraction=0.25)
    data = text.encode("utf-8")
    assert b.task == "lm" and b.vocab_size == 256 and b.block_size == 8
    assert bytes(torch.cat([b.train_x, b.val_x]).tolist()) == data  # contiguous, nothing lost
    assert len(b.train_x) == int(len(data) * 0.75)
    assert b.num_train_examples == len(b.train_x) - 8
    x, y = b.get_lm_batch("train", torch.tensor([0, 3, b.num_train_examples - 1]))
    assert x.shape == y.shape == (3, 8) and x.dtype == torch.int64
    assert bytes(x[1].tolist()) == data[3:11] and bytes(y[1].tolist()) == data[4:12]
    assert y[2, -1] == b.train_x[-1]  # the last valid window ends on the last train token


def test_text_default_ships_with_python():
    b = load_text(max_chars=20_000)
    assert len(b.train_x) + len(b.val_x) == 20_000
    assert b.train_x.dtype == torch.uint8  # bytes stay bytes; batches widen to int64
    assert int(b.train_x.max()) < 256 and int(b.train_x.min()) >= 0
    full = load_text()
    assert len(full.train_x) + len(full.val_x) > 400_000
    assert b"statement" in bytes(full.train_x[:5000].tolist())
    # max_chars keeps the head of each split: a short run validates on the full run's text
    assert torch.equal(b.train_x, full.train_x[:18_000]) and torch.equal(b.val_x, full.val_x[:2000])


def test_text_errors(tmp_path):
    with pytest.raises(DataError, match="expected a text file at"):
        load_text(path=str(tmp_path / "missing.txt"))
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(DataError, match="too short for block_size=64"):
        load_text(path=str(tmp_path / "short.txt"))
    with pytest.raises(ValueError, match="val_fraction"):
        load_text(val_fraction=1.0)


# A small library tree of real Python files, written out of name order.
_TREE = {
    "zipfile_like.py": "import zlib\n\ndef crc(data: bytes) -> int:\n    return zlib.crc32(data)\n",
    "pkg/sub/deep.py": "class Deep:\n    depth = 3\n\n    def __repr__(self):\n        return 'Deep()'\n",
    "alpha.py": '"""Alpha."""\n\nALPHA = [i * i for i in range(10)]\n',
    "pkg/__init__.py": "from pkg.mod import run\n\n__all__ = ['run']\n",
    "pkg/mod.py": "import sys\n\n\ndef run(argv=None):\n    return len(argv or sys.argv)\n",
    "Beta.py": "def beta(x):\n    if x > 0:\n        return -x\n    return x\n",
}
_SKIPPED = {  # test suites, third-party packages, bytecode, build-specific files, non-Python files
    "test/test_alpha.py": "import unittest\n", "pkg/tests/test_mod.py": "assert True\n",
    "site-packages/other/__init__.py": "x = 1\n", "__pycache__/alpha.py": "y = 2\n",
    "_sysconfigdata__linux.py": "build_time_vars = {}\n", "pydoc_data/topics.py": "topics = {}\n",
    "config-3.11-x86_64-linux-gnu/python-config.py": "z = 3\n", "README.txt": "not code\n",
}


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body, encoding="utf-8")


def _val_names(docs, train: bytes, val: bytes) -> set[str]:
    """The names of the documents in ``val``, checking that ``train`` and ``val`` hold every
    document whole, on one side, in name order."""
    names, t, v = set(), 0, 0
    for name, body in sorted(docs):
        if train[t:t + len(body)] == body:
            t += len(body)
        else:
            assert val[v:v + len(body)] == body, f"{name} is on neither side, or cut in two"
            v += len(body)
            names.add(name)
    assert (t, v) == (len(train), len(val))
    return names


def test_stdlib_corpus_reads_a_library_tree_in_name_order(tmp_path):
    _write_tree(tmp_path, {**_SKIPPED, **_TREE})
    docs = stdlib_documents(tmp_path)
    assert [name for name, _ in docs] == sorted(_TREE)  # POSIX relative paths, sorted
    assert all(body == _TREE[name].encode() for name, body in docs)
    assert stdlib_documents(str(tmp_path)) == docs


def test_stdlib_corpus_splits_by_whole_files_deterministically(tmp_path):
    _write_tree(tmp_path, _TREE)
    docs = stdlib_documents(tmp_path)
    train, val = split_by_document(docs, 0.3)
    assert split_by_document(docs[::-1], 0.3) == (train, val)  # the input's order does not matter
    val_names = _val_names(docs, train, val)
    assert len(val) >= 0.3 * (len(train) + len(val)) and train
    by_hash = sorted(_TREE, key=lambda n: (zlib.crc32(n.encode()), n))
    assert val_names == set(by_hash[:len(val_names)])  # the lowest hashes validate
    assert 0 < len(split_by_document(docs, 0.05)[1]) < len(val)


def test_stdlib_corpus_loads_with_the_help_topics_and_max_chars(tmp_path):
    _write_tree(tmp_path, _TREE)
    full = load_text(corpus="stdlib", stdlib_dir=str(tmp_path), block_size=8)
    assert full.train_x.dtype == torch.uint8
    tree_bytes = sum(len(body.encode()) for body in _TREE.values())
    assert len(full.train_x) + len(full.val_x) == len(help_topics()) + tree_bytes
    b = load_text(corpus="stdlib", stdlib_dir=str(tmp_path), block_size=8, max_chars=1000)
    assert torch.equal(b.train_x, full.train_x[:900]) and torch.equal(b.val_x, full.val_x[:100])


def test_stdlib_corpus_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory; set dataset.stdlib_dir"):
        load_text(corpus="stdlib", stdlib_dir=str(tmp_path / "missing"))
    _write_tree(tmp_path, _SKIPPED)  # only files the corpus never reads
    with pytest.raises(DataError, match="no .py files under .*dataset.corpus=help_topics"):
        load_text(corpus="stdlib", stdlib_dir=str(tmp_path))
    with pytest.raises(DataError, match="dataset.corpus must be one of help_topics, stdlib, got 'pep8'"):
        load_text(corpus="pep8")


def test_stdlib_corpus_of_this_python_is_over_ten_megabytes():
    cfg = OmegaConf.load(CONF / "dataset" / "text.yaml")
    cfg.corpus = "stdlib"
    b = hydra.utils.instantiate(cfg, _convert_="all")
    total = len(b.train_x) + len(b.val_x)
    assert total > 10_000_000 and len(b.val_x) >= cfg.val_fraction * total
    assert b"def " in bytes(b.val_x[:100_000].tolist())


# ---------------------------------------------------------------- bundle

def test_bundle_batches_and_checks():
    x, y = torch.randn(6, 2), torch.arange(6) % 3
    b = DataBundle("classification", x, y, x[:2], y[:2], num_classes=3)
    bx, by = b.get_batch("train", [4, 1])
    torch.testing.assert_close(bx, x[[4, 1]])
    torch.testing.assert_close(by, y[[4, 1]])
    assert b.num_train_examples == 6 and b.num_val_examples == 2
    with pytest.raises(ValueError, match="get_lm_batch"):
        b.get_lm_batch("train", [0])
    with pytest.raises(ValueError, match="split must be"):
        b.get_batch("test", [0])
    with pytest.raises(ValueError, match="task must be one of"):
        DataBundle("segmentation", x, y, x, y)
    with pytest.raises(ValueError, match="train_y must be"):
        DataBundle("classification", x, y[:3], x, y)
    lm = DataBundle("lm", torch.arange(20), None, torch.arange(10), None,
                    vocab_size=20, block_size=4)
    assert lm.num_train_examples == 16
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        lm.get_lm_batch("val", [6])
    moved = lm.to("cpu")
    assert torch.equal(moved.train_x, lm.train_x) and moved.block_size == 4


# ---------------------------------------------------------------- CIFAR-10

def _write_cifar(folder: Path, n_per_batch=4, n_test=3, str_keys=False):
    """Batches shaped like the official ones: Python-2-style dicts with bytes keys, uint8 data
    [N, 3072] (R plane, G plane, B plane, each row-major 32x32) and a list of int labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        batch = {key("batch_label"): b"training batch", key("labels"): labels,
                 key("data"): data, key("filenames"): [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    return written


def test_cifar10_reads_official_layout(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the folder itself
        b = load_cifar10(str(path))
        assert b.train_x.shape == (20, 3, 32, 32) and b.val_x.shape == (3, 3, 32, 32)
        assert b.num_classes == 10 and b.train_y.dtype == torch.int64
    assert b.train_y.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert b.val_y.tolist() == written["test_batch"][1]
    data = written["data_batch_2"][0]  # example 4 of the train set is batch 2's first
    for c in range(3):  # channel c is the c-th 1024-byte plane; pixel (h, w) at h*32 + w
        expect = (data[0, c * 1024 + 5 * 32 + 7] / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        assert b.train_x[4, c, 5, 7].item() == pytest.approx(expect, abs=1e-6)


def test_cifar10_holdout_and_resize(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", n_per_batch=10, str_keys=True)
    b = load_cifar10(str(tmp_path), val_fraction=0.2, image_size=16)
    assert len(b.train_x) + len(b.val_x) == 50 and b.val_x.shape[1:] == (3, 16, 16)
    with pytest.raises(ValueError, match="set channels: 3"):
        load_cifar10(str(tmp_path), channels=1)


def test_cifar10_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_1\.\.5 and test_batch"):
        load_cifar10(str(tmp_path / "nowhere"))
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar(root)
    (root / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing"):
        load_cifar10(str(tmp_path))
    _write_cifar(tmp_path / "b" / "cifar-10-batches-py")
    broken = tmp_path / "b" / "cifar-10-batches-py" / "data_batch_3"
    broken.write_bytes(broken.read_bytes()[:500])  # truncated download
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        load_cifar10(str(tmp_path / "b"))
    wrong = tmp_path / "c" / "cifar-10-batches-py"
    _write_cifar(wrong)
    (wrong / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                        b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"expected uint8 \[N, 3072\]"):
        load_cifar10(str(tmp_path / "c"))


# ---------------------------------------------------------------- MNIST

def _idx(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, n_train=12, n_test=5, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for name, array, magic in ((f"{prefix}-images-idx3-ubyte", images, 2051),
                                   (f"{prefix}-labels-idx1-ubyte", labels, 2049)):
            raw = _idx(array, magic)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_reads_idx(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    b = load_mnist(str(tmp_path))
    assert b.train_x.shape == (12, 1, 28, 28) and b.val_x.shape == (5, 1, 28, 28)
    assert b.train_y.tolist() == arrays["train"][1].tolist()
    assert b.val_y.dtype == torch.int64 and b.num_classes == 10
    expect = (arrays["train"][0][3, 10, 20] / 255 - MNIST_MEAN) / MNIST_STD
    assert b.train_x[3, 0, 10, 20].item() == pytest.approx(expect, abs=1e-5)


def test_mnist_raw_subfolder_resize_channels_and_holdout(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw", n_train=20)
    b = load_mnist(str(tmp_path), image_size=32, channels=3, val_fraction=0.25)
    assert b.train_x.shape[1:] == (3, 32, 32) and len(b.train_x) + len(b.val_x) == 20


def test_mnist_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError, match="expected MNIST IDX files train-images-idx3-ubyte"):
        load_mnist(str(tmp_path / "nowhere"))
    _write_mnist(tmp_path / "a")
    (tmp_path / "a" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] is missing"):
        load_mnist(str(tmp_path / "a"))
    _write_mnist(tmp_path / "b")
    f = tmp_path / "b" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_mnist(str(tmp_path / "b"))
    _write_mnist(tmp_path / "c")
    # labels file where images belong: magic 2049 instead of 2051
    (tmp_path / "c" / "train-images-idx3-ubyte").write_bytes(
        (tmp_path / "c" / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        load_mnist(str(tmp_path / "c"))
    _write_mnist(tmp_path / "d", gz=True)
    g = tmp_path / "d" / "t10k-images-idx3-ubyte.gz"
    g.write_bytes(g.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot read"):
        load_mnist(str(tmp_path / "d"))
    _write_mnist(tmp_path / "e", n_train=12)
    (tmp_path / "e" / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(11), 2049))
    with pytest.raises(DataError, match="has 12 images but"):
        load_mnist(str(tmp_path / "e"))


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")))
def test_every_dataset_config_instantiates(name, tmp_path):
    cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    if name == "cifar10":
        _write_cifar(tmp_path / "cifar-10-batches-py")
    elif name == "mnist":
        _write_mnist(tmp_path)
    if name in ("cifar10", "mnist"):
        cfg.path = str(tmp_path)
    if name == "text":
        cfg.max_chars = 5000
    bundle = hydra.utils.instantiate(cfg, _convert_="all")
    assert isinstance(bundle, DataBundle) and bundle.task == cfg.task
    if cfg.task == "lm":
        assert (bundle.vocab_size, bundle.block_size) == (cfg.vocab_size, cfg.block_size)
    elif cfg.task == "regression":
        assert bundle.input_shape == (cfg.in_features,) and bundle.train_y.is_floating_point()
    else:
        assert bundle.num_classes == cfg.num_classes
        assert bundle.input_shape == (cfg.channels, cfg.image_size, cfg.image_size)


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_file_dataset_configs_require_a_path(name):
    cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    assert OmegaConf.is_missing(cfg, "path")
    with pytest.raises(Exception, match="path"):
        hydra.utils.instantiate(cfg)
