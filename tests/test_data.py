"""Data loaders (real on-disk formats, integrity checks, splits), augmentation and batch sampling."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ala_gym.core.data import (
    CIFAR10_SUBSET_SIZES,
    FASHION_MNIST_DEBIAN_DIR,
    LOADERS,
    BatchSampler,
    ClassBalancedSampler,
    ClassificationData,
    DataError,
    Split,
    build_cifar10_subset,
    cifar10_subset_dir,
    clear_loaded_datasets,
    default_cache_dir,
    from_user_data,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    random_crop_flip,
    register_dataset,
    with_data_home,
)

CIFAR_SUBSET = cifar10_subset_dir()  # $ALA_GYM_DATA/cifar10-subset (conftest.py: ../shared/data beside the checkout)


def _check_split_types(data, device: str = "cpu") -> None:
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert split.images.device.type == device and split.labels.device.type == device
        assert split.images.shape[0] == split.labels.shape[0]


def test_digits_split_sizes_and_types() -> None:
    data = load_digits()
    assert (len(data.train), len(data.val), len(data.test)) == (1077, 360, 360)
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10 and not data.augment
    _check_split_types(data)
    assert int(data.train.images.max()) == 255  # 0..16 pixels scaled to the uint8 range


def test_split_is_seeded() -> None:
    same = load_digits(split_seed=3), load_digits(split_seed=3)
    assert torch.equal(same[0].val.labels, same[1].val.labels) and torch.equal(same[0].val.images, same[1].val.images)
    assert not torch.equal(load_digits(split_seed=4).val.images, same[0].val.images)


def test_the_validation_split_is_carved_out_of_training_without_overlap() -> None:
    """Every training sample lands in exactly one of train and val, the test samples in test alone: rows told
    apart by their values (sample ``i`` holds ``i``; test samples negative)."""
    features = np.arange(100, dtype=np.float32)[:, None].repeat(3, 1)
    test_features = -np.arange(1, 21, dtype=np.float32)[:, None].repeat(3, 1)
    data = from_user_data((features, np.arange(100) % 4, test_features, np.arange(20) % 4), val_size=30)
    train, val = (set(split.images[:, 0].tolist()) for split in (data.train, data.val))
    assert len(train) == 70 and len(val) == 30 and not train & val and train | val == set(range(100))
    assert set(data.test.images[:, 0].tolist()) == set((-np.arange(1, 21)).tolist())
    # Each sample keeps its own label through the split.
    for split in (data.train, data.val):
        assert torch.equal(split.labels, split.images[:, 0].long() % 4)


def test_tiny_cifar_loads_with_md5sums(tiny_cifar_dir: Path) -> None:
    data = load_cifar10(data_root=tiny_cifar_dir, val_size=20)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 20)
    assert data.image_shape == (3, 32, 32) and data.num_classes == 10 and data.augment
    _check_split_types(data)
    # Default validation size: a fifth of the training images, as 10k of the full 50k.
    assert len(load_cifar10(data_root=tiny_cifar_dir).val) == 20


def test_tiny_cifar_pixels_follow_cifar_layout(tiny_cifar_dir: Path) -> None:
    batch = pickle.loads((tiny_cifar_dir / "test_batch").read_bytes())
    data = load_cifar10(data_root=tiny_cifar_dir, val_size=20)
    # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    expected = torch.from_numpy(batch["data"]).view(-1, 3, 32, 32)
    assert torch.equal(data.test.images, expected)
    assert data.test.labels.tolist() == batch["labels"]


@pytest.mark.parametrize("victim", ["data_batch_3", "test_batch", "batches.meta"])
def test_corrupt_cifar_file_is_named(tiny_cifar_dir: Path, tmp_path: Path, victim: str) -> None:
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    path = folder / victim
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=victim):
        load_cifar10(data_root=folder)


def test_missing_cifar_file_is_named(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    (folder / "data_batch_2").unlink()
    with pytest.raises(DataError, match="data_batch_2.*missing"):
        load_cifar10(data_root=folder)


def test_missing_standard_cifar_names_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nowhere" / "cifar-10-batches-py")):
        load_cifar10(data_root=tmp_path / "nowhere", download=False)


def test_missing_cifar_defaults_to_cache_folder(isolated_cache: Path) -> None:
    with pytest.raises(DataError, match=str(isolated_cache / "cifar10" / "cifar-10-batches-py")):
        load_cifar10(download=False)


def test_md5sums_may_hold_blank_lines_but_must_list_every_file(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    """Blank lines (a trailing one, or one between entries) are skipped; a file without its checksum is named."""
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    lines = (folder / "MD5SUMS").read_text().splitlines()
    (folder / "MD5SUMS").write_text("\n\n".join(lines) + "\n\n")
    assert len(load_cifar10(data_root=folder, val_size=20).train) == 80
    (folder / "MD5SUMS").write_text("".join(f"{line}\n" for line in lines if not line.endswith("data_batch_2")))
    with pytest.raises(DataError, match=rf"^{folder / 'MD5SUMS'} has no checksum for data_batch_2; restore the folder"):
        load_cifar10(data_root=folder)


def test_a_cifar_format_folder_without_md5sums_is_named_as_such(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    """A subset folder that lost its MD5SUMS is told so, with how to restore or rewrite it, instead of being taken
    for torchvision's root and reported as a missing full CIFAR-10."""
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar", ignore=shutil.ignore_patterns("MD5SUMS"))
    with pytest.raises(DataError, match=rf"^{folder} holds CIFAR-10 batch files but no MD5SUMS.*restore the folder.*md5sum"):
        load_cifar10(data_root=folder)
    assert not (folder / "cifar-10-batches-py").exists()  # no download attempted into it


def test_an_md5sums_that_cannot_be_read_is_named(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar", ignore=shutil.ignore_patterns("MD5SUMS"))
    (folder / "MD5SUMS").mkdir()  # a read fails, as it would without permission
    with pytest.raises(DataError, match=rf"^{folder / 'MD5SUMS'} cannot be read \(Is a directory\); restore the folder"):
        load_cifar10(data_root=folder)


def test_md5sums_in_binary_mode_or_capital_letters_are_read(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    """``md5sum -b`` writes ``<md5> *<file name>``, and some tools write the digest in capitals: the same checksums."""
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    lines = [line.split() for line in (folder / "MD5SUMS").read_text().splitlines()]
    (folder / "MD5SUMS").write_text("".join(f"{digest.upper()} *{name}\n" for digest, name in lines))
    data = load_cifar10(data_root=folder, val_size=20)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 20)


def test_an_md5sums_digest_of_another_length_is_named_with_its_line(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    """An md5 is 32 hex digits: a line with 31 is refused as malformed, not read as a checksum that every file fails."""
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    lines = (folder / "MD5SUMS").read_text().splitlines()
    lines[2] = lines[2][1:]  # the third line's digest loses its first digit
    (folder / "MD5SUMS").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"MD5SUMS, line 3, is not '<md5>  <file name>'"):
        load_cifar10(data_root=folder)


def test_a_reader_failure_on_sound_files_is_passed_on_not_blamed_on_a_file(
    tiny_cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of torchvision's reader (a failed read, here) where every file checks out afterwards is raised as
    it is: the folder is not called damaged."""

    class FailingReader:
        def __init__(self, root: str, train: bool) -> None:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr("ala_gym.core.data._cifar10_reader_class", lambda: FailingReader)
    with pytest.raises(OSError, match=r"^\[Errno 5\] Input/output error$"):
        load_cifar10(data_root=tiny_cifar_dir)


def test_a_standard_cifar_folder_gives_what_its_md5sums_copy_gives(
    tiny_cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's own layout (``cifar-10-batches-py`` under the root, no MD5SUMS) is read by torchvision's CIFAR10;
    its checks against the published dataset's md5 sums are skipped for the tiny stand-in."""
    from torchvision.datasets import CIFAR10

    shutil.copytree(tiny_cifar_dir, tmp_path / "cifar-10-batches-py", ignore=shutil.ignore_patterns("MD5SUMS"))
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(CIFAR10, "_load_meta", lambda self: None)
    standard = load_cifar10(data_root=tmp_path, download=False, val_size=20)
    own = load_cifar10(data_root=tiny_cifar_dir, val_size=20)
    # data_root at the extracted folder itself reads the same: torchvision's root is the folder above it.
    inside = load_cifar10(data_root=tmp_path / "cifar-10-batches-py", download=False, val_size=20)
    for split in ("train", "val", "test"):
        for other in (own, inside):
            assert torch.equal(getattr(standard, split).images, getattr(other, split).images), split
            assert torch.equal(getattr(standard, split).labels, getattr(other, split).labels), split


@pytest.mark.skipif(not CIFAR_SUBSET.exists(), reason=f"real CIFAR-10 subset not present at {CIFAR_SUBSET}")
def test_real_cifar_subset() -> None:
    data = load_cifar10(data_root=CIFAR_SUBSET)
    # The subset's README: 1,102 + 4 x 1,017 training images, 1,017 test images.
    assert len(data.train) + len(data.val) == 5170 and len(data.test) == 1017
    assert len(data.val) == 5170 // 5
    _check_split_types(data)
    assert sorted(data.test.labels.unique().tolist()) == list(range(10))


@pytest.mark.skipif(not CIFAR_SUBSET.exists(), reason=f"real CIFAR-10 subset not present at {CIFAR_SUBSET}")
def test_real_cifar_subset_corrupted_copy(tmp_path: Path) -> None:
    folder = shutil.copytree(CIFAR_SUBSET, tmp_path / "subset")
    victim = folder / "data_batch_4"
    victim.chmod(0o644)  # the shared copy is read-only
    raw = bytearray(victim.read_bytes())
    raw[1000] ^= 0x01
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=str(victim)):
        load_cifar10(data_root=folder)


def _full_cifar_batches(folder: Path, batches: dict[str, dict], extra: int, rng: np.random.Generator) -> Path:
    """A stand-in for the full dataset's ``cifar-10-batches-py``: each batch's images, then ``extra`` other ones,
    with the published files' keys (``filenames`` among them) and batch labels."""
    full = folder / "cifar-10-batches-py"
    full.mkdir(parents=True)
    for name, batch in batches.items():
        data = np.concatenate([batch["data"], rng.integers(0, 256, (extra, 3072), dtype=np.uint8)])
        labels = list(batch["labels"]) + [int(v) for v in rng.integers(0, 10, extra)]
        label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
        entry = {"batch_label": label, "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(len(data))]}
        (full / name).write_bytes(pickle.dumps(entry))
    return full


def _batches(folder: Path) -> dict[str, dict]:
    return {name: pickle.loads((folder / name).read_bytes(), encoding="latin1") for name in CIFAR10_SUBSET_SIZES}


def test_the_subset_is_built_from_the_first_images_of_each_full_batch(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    full = _full_cifar_batches(tmp_path / "cifar10", _batches(tiny_cifar_dir), extra=7, rng=rng)
    (full / "batches.meta").write_bytes((tiny_cifar_dir / "batches.meta").read_bytes())
    sizes = dict.fromkeys(CIFAR10_SUBSET_SIZES, 12)
    build_cifar10_subset(tmp_path / "cifar10", tmp_path / "data" / "subset", sizes)
    built, source = _batches(tmp_path / "data" / "subset"), _batches(full)
    for name in CIFAR10_SUBSET_SIZES:
        assert np.array_equal(built[name]["data"], source[name]["data"][:12]), name
        assert built[name]["labels"] == source[name]["labels"][:12], name
    assert (tmp_path / "data" / "subset" / "batches.meta").read_bytes() == (full / "batches.meta").read_bytes()
    data = load_cifar10(data_root=tmp_path / "data" / "subset", val_size=10)  # its MD5SUMS checked on the way
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 12)
    with pytest.raises(DataError, match="already exists"):  # nothing is overwritten
        build_cifar10_subset(full, tmp_path / "data" / "subset", sizes)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["subset"]  # no half-written folder left beside it


def test_a_full_batch_of_exactly_the_subsets_size_gives_all_its_images(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    """A source batch exactly as large as the subset's share is enough: the subset then holds every image of it."""
    source = _batches(tiny_cifar_dir)  # 20 images a batch
    full = _full_cifar_batches(tmp_path / "cifar10", source, extra=0, rng=np.random.default_rng(0))
    (full / "batches.meta").write_bytes((tiny_cifar_dir / "batches.meta").read_bytes())
    build_cifar10_subset(full, tmp_path / "subset", dict.fromkeys(CIFAR10_SUBSET_SIZES, 20))
    built = _batches(tmp_path / "subset")
    for name in CIFAR10_SUBSET_SIZES:
        assert np.array_equal(built[name]["data"], source[name]["data"]), name
        assert built[name]["labels"] == source[name]["labels"], name


def test_a_subset_of_other_images_is_refused_and_leaves_nothing(tiny_cifar_dir: Path, tmp_path: Path) -> None:
    full = _full_cifar_batches(tmp_path / "cifar10", _batches(tiny_cifar_dir), extra=2000, rng=np.random.default_rng(5))
    (full / "batches.meta").write_bytes((tiny_cifar_dir / "batches.meta").read_bytes())
    # At the subset's own sizes the images are checked against those of the committed results: these differ.
    with pytest.raises(DataError, match=f"first 1102 images of {full / 'data_batch_1'} are not those"):
        build_cifar10_subset(full, tmp_path / "data" / "cifar10-subset")
    (full / "batches.meta").unlink()
    with pytest.raises(DataError, match=rf"^cannot read {full / 'batches.meta'} \(.*No such file.*\); extract "):
        build_cifar10_subset(full, tmp_path / "data" / "cifar10-subset", dict.fromkeys(CIFAR10_SUBSET_SIZES, 5))
    (full / "test_batch").unlink()
    with pytest.raises(DataError, match=f"cannot read the full CIFAR-10 batch {full / 'test_batch'}"):
        build_cifar10_subset(full, tmp_path / "data" / "cifar10-subset", dict.fromkeys(CIFAR10_SUBSET_SIZES, 5))
    with pytest.raises(DataError, match="holds 2020 images, fewer than the subset's 5000"):
        build_cifar10_subset(full, tmp_path / "data" / "cifar10-subset", {"data_batch_1": 5000})
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.skipif(not CIFAR_SUBSET.exists(), reason=f"real CIFAR-10 subset not present at {CIFAR_SUBSET}")
def test_the_subset_built_anew_holds_the_committed_results_images(tmp_path: Path) -> None:
    # A full dataset whose batches begin with the subset's images, as the real one does: the build passes its
    # check against CIFAR10_SUBSET_SHA256 and loads to the same splits as the subset itself.
    source = _batches(CIFAR_SUBSET)
    for batch in source.values():
        batch["data"] = np.asarray(batch["data"])
    full = _full_cifar_batches(tmp_path / "cifar10", source, extra=3, rng=np.random.default_rng(0))
    (full / "batches.meta").write_bytes((CIFAR_SUBSET / "batches.meta").read_bytes())
    build_cifar10_subset(tmp_path / "cifar10", tmp_path / "built")
    built, shared = load_cifar10(data_root=tmp_path / "built"), load_cifar10(data_root=CIFAR_SUBSET)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(built, split).images, getattr(shared, split).images), split
        assert torch.equal(getattr(built, split).labels, getattr(shared, split).labels), split


def test_a_dataset_of_the_data_home_is_resolved_there_never_downloaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALA_GYM_DATA", str(tmp_path))
    with pytest.raises(DataError, match=f"no dataset folder {tmp_path / 'cifar10-subset'} .*ala_gym.benchmarks.cifar10_subset"):
        with_data_home({"data_root": "cifar10-subset"})
    (tmp_path / "cifar10-subset").mkdir()
    assert with_data_home({"data_root": "cifar10-subset", "lr": 0.1}) == {
        "download": False, "data_root": str(tmp_path / "cifar10-subset"), "lr": 0.1
    }
    # download=False is only the default: a keyword that says otherwise is kept.
    assert with_data_home({"data_root": "cifar10-subset", "download": True})["download"] is True
    assert with_data_home({"data_root": str(tmp_path), "lr": 0.1}) == {"data_root": str(tmp_path), "lr": 0.1}
    assert with_data_home({"lr": 0.1}) == {"lr": 0.1}


def test_tiny_fashion_mnist_loads(tiny_fashion_mnist_dir: Path, isolated_cache: Path) -> None:
    data = load_fashion_mnist(data_root=tiny_fashion_mnist_dir, val_size=40)
    assert (len(data.train), len(data.val), len(data.test)) == (160, 40, 50)
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10 and not data.augment
    _check_split_types(data)
    assert data.test.labels.tolist() == [k % 10 for k in range(50)]
    assert any(isolated_cache.rglob("t10k-images-idx3-ubyte"))  # unpacked into the cache, not the source


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    data = load_fashion_mnist()
    assert (len(data.train), len(data.val), len(data.test)) == (50000, 10000, 10000)
    _check_split_types(data)


@pytest.mark.parametrize("damage", ["missing", "truncated", "not_gzip", "short_idx"])
def test_broken_fashion_mnist_file_is_named(tiny_fashion_mnist_dir: Path, tmp_path: Path, damage: str) -> None:
    folder = shutil.copytree(tiny_fashion_mnist_dir, tmp_path / "fmnist")
    victim = folder / "train-images-idx3-ubyte.gz"
    packed = victim.read_bytes()
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(packed[: len(packed) // 2])
    elif damage == "not_gzip":
        victim.write_bytes(b"this is not a gzip file at all")
    else:  # a valid gzip whose idx content is shorter than its header promises
        victim.write_bytes(gzip.compress(gzip.decompress(packed)[:-100]))
    with pytest.raises(DataError, match=str(victim)):
        load_fashion_mnist(data_root=folder, val_size=40)


def test_random_crop_flip_is_shifted_mirrored_window() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=generator)
    out = random_crop_flip(images, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flipped = 0
    for image, crop in zip(padded, out):
        # Exactly one window of the padded image (plain or mirrored) equals the crop.
        matches = [
            (dy, dx, mirror)
            for dy in range(9)
            for dx in range(9)
            for mirror in (False, True)
            if torch.equal(crop, image[:, dy : dy + 8, dx : dx + 8].flip(2) if mirror else image[:, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        flipped += matches[0][2]
    assert 0 < flipped < 64  # both branches are taken


def test_random_crop_flip_is_deterministic_per_generator() -> None:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    first = random_crop_flip(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, random_crop_flip(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, random_crop_flip(images, torch.Generator().manual_seed(8)))


def test_random_crop_flip_takes_every_offset_pair_and_flips_about_half_the_images() -> None:
    """Each axis's offset into the 4-pixel padded image is drawn from 0..8, the two axes independently, and about
    half the crops are mirrored. Pixel ``(r, c)`` of the image holds ``1 + 8 r + c``, so each crop tells where it
    was cut: a visible pixel at crop position ``(y, x)`` lies at padded row ``dy + y`` and column ``dx + x`` (mirrored:
    ``dx + 7 - x``), the image's own pixel ``(r, c)`` at padded ``(r + 4, c + 4)``."""
    count = 1000
    image = (torch.arange(64) + 1).to(torch.uint8).view(1, 1, 8, 8)
    crops = random_crop_flip(image.expand(count, 1, 8, 8).contiguous(), torch.Generator().manual_seed(3))[:, 0].long()
    offsets, mirrored = set(), 0
    for crop in crops:
        ys, xs = torch.nonzero(crop, as_tuple=True)
        rows, cols = (crop[ys, xs] - 1) // 8, (crop[ys, xs] - 1) % 8
        flipped = bool(((cols - cols[0]) * (xs - xs[0]) < 0).any())  # columns run against x: mirrored
        (dy,), (dx,) = set((rows + 4 - ys).tolist()), set((cols + 4 + xs - 7 if flipped else cols + 4 - xs).tolist())
        offsets.add((dy, dx))
        mirrored += flipped
    assert offsets == {(dy, dx) for dy in range(9) for dx in range(9)}
    assert 0.45 < mirrored / count < 0.55


def test_batch_sampler_determinism_and_epochs(tiny_cifar_dir: Path) -> None:
    data = load_cifar10(data_root=tiny_cifar_dir, val_size=20)

    def draw(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sampler = BatchSampler(data, 16, torch.Generator().manual_seed(seed))
        return [sampler.next() for _ in range(7)]  # 5 full batches an epoch: crosses an epoch boundary

    first, again, other = draw(0), draw(0), draw(1)
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) and y.shape == (16,)
    assert any(not torch.equal(x, x2) for (x, _), (x2, _) in zip(first, other))


def test_batch_sampler_epochs_are_permutations() -> None:
    data = load_digits()  # 1,077 training images: 10 batches of 100 an epoch, the ragged 77 dropped
    sampler = BatchSampler(data, 100, torch.Generator().manual_seed(0))
    sampler.next()
    epoch = sampler._order
    assert torch.equal(epoch.sort().values, torch.arange(len(data.train)))
    for _ in range(9):
        sampler.next()
    assert sampler._order is epoch
    sampler.next()
    assert sampler._order is not epoch and not torch.equal(sampler._order, epoch)
    # An epoch that batches divide exactly (3 x 359 = 1,077) is used to its last batch: every image once.
    exact = BatchSampler(data, 359, torch.Generator().manual_seed(0))
    seen = torch.cat([exact.next()[0] for _ in range(3)])
    assert torch.equal(seen.flatten(1).unique(dim=0), exact.data.normalize(data.train.images).flatten(1).unique(dim=0))
    assert BatchSampler(data, 10**6, torch.Generator()).batch_size == len(data.train)
    with pytest.raises(ValueError):
        BatchSampler(data, 0, torch.Generator())


def test_class_balanced_sampler_draws_p_classes_of_k_distinct_samples() -> None:
    data = load_digits()
    sampler = ClassBalancedSampler(data, 4, 5, torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(20):
        inputs, labels = sampler.next()
        assert inputs.shape == (20, *data.image_shape) and labels.shape == (20,)
        groups = labels.view(4, 5)
        assert torch.all(groups == groups[:, :1]) and len(set(groups[:, 0].tolist())) == 4  # P classes of K each
        rows = data.normalize(data.train.images).flatten(1)
        index = torch.cdist(inputs.flatten(1), rows).argmin(dim=1)  # which training images were drawn
        assert len(set(index.tolist())) == 20, "K distinct samples per class"
        assert torch.equal(data.train.labels[index], labels)
        seen |= set(groups[:, 0].tolist())
    assert seen == set(range(10))
    again = ClassBalancedSampler(data, 4, 5, torch.Generator().manual_seed(0))
    first = ClassBalancedSampler(data, 4, 5, torch.Generator().manual_seed(0)).next()
    assert all(torch.equal(a, b) for a, b in zip(first, again.next()))


def test_class_balanced_sampler_draws_a_class_of_exactly_k_samples_whole() -> None:
    """A class with exactly K training samples is drawn, and each of its draws holds those K samples, never the
    padding that lines its row up with the larger classes' rows."""
    labels = torch.tensor([0] * 12 + [1] * 3 + [2] * 9)
    # Feature 0 of training sample i holds i; with mean 0 and spread 1 it reads back as i from a batch.
    train = Split(torch.arange(24, dtype=torch.float32)[:, None], labels)
    data = ClassificationData(
        "imbalanced", train, train, train, num_classes=3, mean=torch.zeros(1), std=torch.ones(1), augment=False
    )
    sampler = ClassBalancedSampler(data, 3, 3, torch.Generator().manual_seed(0))
    for _ in range(20):
        inputs, drawn = sampler.next()
        index, groups = inputs[:, 0].long().view(3, 3), drawn.view(3, 3)
        assert torch.equal(labels[index], groups) and sorted(groups[:, 0].tolist()) == [0, 1, 2]
        assert all(len(set(row.tolist())) == 3 for row in index)  # K distinct samples of each class
        assert sorted(index[groups[:, 0] == 1][0].tolist()) == [12, 13, 14]


def test_class_balanced_sampler_rejects_too_few_classes() -> None:
    data = load_digits()
    with pytest.raises(ValueError, match="lower P or K"):
        ClassBalancedSampler(data, 11, 2, torch.Generator())
    with pytest.raises(ValueError, match="lower P or K"):
        ClassBalancedSampler(data, 2, 10**4, torch.Generator())
    with pytest.raises(ValueError, match="positive"):
        ClassBalancedSampler(data, 0, 2, torch.Generator())


def _rewrite_cifar_md5sums(folder: Path) -> None:
    """Checksums that match the files as they are now, so only the content checks can catch damage."""
    names = ["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    lines = [f"{hashlib.md5((folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (folder / "MD5SUMS").write_text("\n".join(lines) + "\n")


def _rewrite_idx(path: Path, edit: Callable[[bytearray], None]) -> None:
    """Apply ``edit`` to the unpacked bytes of the gzip-compressed idx file ``path``."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    edit(raw)
    path.write_bytes(gzip.compress(bytes(raw)))


def test_fashion_mnist_label_outside_ten_classes_is_named(tiny_fashion_mnist_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_fashion_mnist_dir, tmp_path / "fmnist")
    victim = folder / "train-labels-idx1-ubyte.gz"
    _rewrite_idx(victim, lambda raw: raw.__setitem__(8 + 17, 10))  # the 18th label becomes an eleventh class
    with pytest.raises(DataError, match=rf"{victim} holds label 10 .*reinstall dataset-fashion-mnist"):
        load_fashion_mnist(data_root=folder, val_size=40)


@pytest.mark.parametrize("label", [50, 10, -1])  # 10 is the first label past the ten classes 0..9
def test_cifar_label_outside_ten_classes_is_named(tiny_cifar_dir: Path, tmp_path: Path, label: int) -> None:
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    victim = folder / "data_batch_2"
    batch = pickle.loads(victim.read_bytes())
    batch["labels"][3] = label
    victim.write_bytes(pickle.dumps(batch))
    _rewrite_cifar_md5sums(folder)
    with pytest.raises(DataError, match=rf"{victim} .*label {label} at position 3 .*restore the folder"):
        load_cifar10(data_root=folder)


def test_class_count_is_the_datasets_not_the_largest_label(tiny_fashion_mnist_dir: Path, tmp_path: Path) -> None:
    # The class count is the dataset's, not the largest label seen: a set lacking class 9 still has ten.
    folder = shutil.copytree(tiny_fashion_mnist_dir, tmp_path / "fmnist")
    _rewrite_idx(folder / "t10k-labels-idx1-ubyte.gz", lambda raw: raw.__setitem__(slice(8, None), bytes(len(raw) - 8)))
    _rewrite_idx(folder / "train-labels-idx1-ubyte.gz", lambda raw: raw.__setitem__(slice(8, None), bytes(len(raw) - 8)))
    assert load_fashion_mnist(data_root=folder, val_size=40).num_classes == 10


def test_same_size_corrupt_fashion_mnist_cache_is_unpacked_again(tiny_fashion_mnist_dir: Path, isolated_cache: Path) -> None:
    first = load_fashion_mnist(data_root=tiny_fashion_mnist_dir, val_size=40)
    for name, offset in (("train-images-idx3-ubyte", 16 + 5000), ("t10k-labels-idx1-ubyte", 8 + 3)):
        (cached,) = isolated_cache.rglob(name)
        raw = bytearray(cached.read_bytes())
        raw[offset] = 10 if "labels" in name else raw[offset] ^ 0xFF  # same size, different content
        cached.write_bytes(bytes(raw))
    again = load_fashion_mnist(data_root=tiny_fashion_mnist_dir, val_size=40)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(again, split).images, getattr(first, split).images)
        assert torch.equal(getattr(again, split).labels, getattr(first, split).labels)
    assert again.num_classes == 10


def test_a_fashion_mnist_file_replaced_by_one_of_the_same_size_is_unpacked_anew(
    tiny_fashion_mnist_dir: Path, tmp_path: Path
) -> None:
    """The unpacked copy is keyed by each source file's size and modification time: a file replaced by another of
    the same size (as an updated package may install) is read anew, not served from the earlier unpack."""
    folder = shutil.copytree(tiny_fashion_mnist_dir, tmp_path / "fmnist")
    victim = folder / "t10k-labels-idx1-ubyte.gz"

    def write(labels: list[int], mtime_ns: int) -> None:
        # Stored without compression, so that both versions have the same size.
        idx = bytes([0, 0, 0x08, 1]) + len(labels).to_bytes(4, "big") + bytes(labels)
        victim.write_bytes(gzip.compress(idx, compresslevel=0, mtime=0))
        os.utime(victim, ns=(mtime_ns, mtime_ns))

    before, after = [k % 10 for k in range(50)], [(k + 3) % 10 for k in range(50)]
    write(before, 1_600_000_000 * 10**9)
    size = victim.stat().st_size
    assert load_fashion_mnist(data_root=folder, val_size=40).test.labels.tolist() == before
    write(after, 1_700_000_000 * 10**9)
    assert victim.stat().st_size == size
    assert load_fashion_mnist(data_root=folder, val_size=40).test.labels.tolist() == after


def _swap_images_and_labels(folder: Path) -> Path:
    images, labels = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
    packed = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(packed)
    return images


def _set_dtype_byte(folder: Path) -> Path:
    victim = folder / "t10k-labels-idx1-ubyte.gz"
    _rewrite_idx(victim, lambda raw: raw.__setitem__(2, 0x09))  # signed bytes
    return victim


def _reshape_images(folder: Path) -> Path:
    victim = folder / "train-images-idx3-ubyte.gz"  # 14x56: the same 784 bytes an image, another shape
    _rewrite_idx(victim, lambda raw: raw.__setitem__(slice(8, 16), (14).to_bytes(4, "big") + (56).to_bytes(4, "big")))
    return victim


def _set_leading_magic_bytes(folder: Path) -> Path:
    victim = folder / "train-images-idx3-ubyte.gz"
    _rewrite_idx(victim, lambda raw: raw.__setitem__(slice(0, 2), b"\x00\x01"))  # idx magic starts with two zeros
    return victim


def _append_bytes(folder: Path) -> Path:
    victim = folder / "train-labels-idx1-ubyte.gz"
    _rewrite_idx(victim, lambda raw: raw.extend(bytes(10)))  # ten bytes more than the header's 200 labels
    return victim


def _empty_labels(folder: Path) -> Path:
    victim = folder / "t10k-labels-idx1-ubyte.gz"
    _rewrite_idx(victim, lambda raw: raw.__setitem__(slice(4, None), bytes(4)))  # a header of no labels, and none
    return victim


@pytest.mark.parametrize(
    "damage",
    [_swap_images_and_labels, _set_dtype_byte, _reshape_images, _set_leading_magic_bytes, _append_bytes, _empty_labels],
)
def test_fashion_mnist_file_with_wrong_idx_header_is_named(
    tiny_fashion_mnist_dir: Path, tmp_path: Path, damage: Callable[[Path], Path]
) -> None:
    folder = shutil.copytree(tiny_fashion_mnist_dir, tmp_path / "fmnist")
    victim = damage(folder)
    with pytest.raises(DataError, match=rf"{victim} .*reinstall dataset-fashion-mnist"):
        load_fashion_mnist(data_root=folder, val_size=40)


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("data_batch_4", lambda batch: batch.__setitem__("data", batch["data"][:, :3000]), r"\(20, 3000\) uint8, not"),
        ("data_batch_4", lambda batch: batch.__setitem__("data", batch["data"].reshape(10, 6144)), r"\(10, 6144\) u"),
        # Read silently as float images, or with images and labels misaligned.
        ("data_batch_4", lambda batch: batch.__setitem__("data", batch["data"].astype(np.float64)), "3072\\) float64"),
        ("data_batch_4", lambda batch: batch.__setitem__("labels", batch["labels"][:-1]), r"\(19,\), not 20 integers"),
        # Labels as floats (2.5 would be read as class 2).
        ("data_batch_4", lambda batch: batch.__setitem__("labels", [float(v) for v in batch["labels"]]),
         r"labels are float64 of shape \(20,\), not 20 integers"),
        ("data_batch_4", lambda batch: batch.pop("labels"), "not a CIFAR-10 batch dictionary"),
        ("batches.meta", lambda meta: meta.pop("label_names"), "not a CIFAR-10 batches.meta dictionary"),
    ],
    ids=["narrow_rows", "wide_rows", "float_data", "short_labels", "float_labels", "no_labels",
         "meta_without_label_names"],
)  # fmt: skip
def test_cifar_batch_of_another_shape_is_named(
    tiny_cifar_dir: Path, tmp_path: Path, name: str, damage: Callable[[dict], None], reason: str
) -> None:
    """The damaged file is named with what is wrong in it, although its checksum matches."""
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    victim = folder / name
    batch = pickle.loads(victim.read_bytes())
    damage(batch)
    victim.write_bytes(pickle.dumps(batch))
    _rewrite_cifar_md5sums(folder)
    damaged = rf"{victim} is truncated or not a CIFAR-10 python batch .*restore the folder"
    with pytest.raises(DataError, match=damaged) as raised:
        load_cifar10(data_root=folder)
    assert re.search(reason, str(raised.value)), str(raised.value)


@pytest.mark.parametrize(
    ("module", "numpy_version", "reason"),
    [
        ("numpy._core.gone", "1.26.1",  # as numpy._core.numeric is gone under NumPy 1.26.1
         r"was written by NumPy 2, which NumPy 1\.26\.1 cannot read \(no module 'numpy\._core\.gone'\): "
         r"pip install 'numpy>=2', or write the folder anew under this NumPy$"),
        ("numpy._core.gone", "2.0.0", "needs module 'numpy._core.gone' to unpickle"),  # NumPy 2 lacks it too
        ("a_module_of_the_writer", None, "needs module 'a_module_of_the_writer' to unpickle"),
    ],
)  # fmt: skip
def test_a_cifar_file_that_needs_a_module_to_unpickle_is_not_called_damaged(
    tiny_cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, numpy_version: str | None,
    reason: str,
) -> None:  # fmt: skip
    """Arrays pickled under NumPy 2 name ``numpy._core`` modules, which NumPy 1 lacks: the file is sound, and the
    fix is another NumPy, not restoring the folder."""
    folder = shutil.copytree(tiny_cifar_dir, tmp_path / "cifar")
    (folder / "data_batch_3").write_bytes(f"\x80\x02c{module}\n_reconstruct\nq\x00.".encode("latin1"))
    _rewrite_cifar_md5sums(folder)
    if numpy_version is not None:
        monkeypatch.setattr(np, "__version__", numpy_version)
    with pytest.raises(DataError, match=rf"^CIFAR-10 file {re.escape(str(folder / 'data_batch_3'))} {reason}") as raised:
        load_cifar10(data_root=folder)
    assert "restore" not in str(raised.value) and "\n" not in str(raised.value)


def test_empty_cache_setting_means_the_default(
    tiny_fashion_mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALA_GYM_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ala_gym"
    load_fashion_mnist(data_root=tiny_fashion_mnist_dir, val_size=40)
    assert not any(work.iterdir()), "nothing is unpacked into the working directory"
    assert any((tmp_path / "home" / ".cache" / "ala_gym").rglob("train-images-idx3-ubyte"))


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_unusable_cache_setting_is_named(
    tiny_fashion_mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file")
    cache = blocker if where == "is_a_file" else blocker / "cache"
    monkeypatch.setenv("ALA_GYM_CACHE", str(cache))
    with pytest.raises(DataError, match=rf"{cache}.*set ALA_GYM_CACHE \(or pass cache_dir=\) to a writable folder"):
        load_fashion_mnist(data_root=tiny_fashion_mnist_dir, val_size=40)


def test_unusable_cache_setting_is_named_before_a_cifar_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file")
    cache = blocker / "cache"
    monkeypatch.setenv("ALA_GYM_CACHE", str(cache))
    with pytest.raises(DataError, match=rf"{cache}.*set ALA_GYM_CACHE \(or data_root\) to a writable folder"):
        load_cifar10(download=True)


def test_read_only_cache_folder_is_named(
    tiny_fashion_mnist_dir: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root writes to read-only folders anyway, so the refusal a user would meet is simulated.
    def refuse(*args, dir: str, **kwargs):
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(DataError, match=rf"{isolated_cache}.*Permission denied.*set ALA_GYM_CACHE .*writable folder"):
        load_fashion_mnist(data_root=tiny_fashion_mnist_dir, val_size=40)


def test_training_subset_keeps_a_seeded_part_of_the_training_split() -> None:
    import gymnasium as gym

    from ala_gym.core.data import training_subset

    data = load_digits()
    small = training_subset(data, 200, seed=0)
    assert len(small.train) == 200 and small.val is data.val and small.test is data.test

    def row_counts(split) -> dict[tuple, int]:  # image and label of each sample, counted
        rows = torch.cat([split.images.flatten(1).long(), split.labels[:, None]], dim=1)
        unique, counts = torch.unique(rows, dim=0, return_counts=True)
        return {tuple(row.tolist()): int(count) for row, count in zip(unique, counts)}

    # A part drawn without replacement: no sample more often than the split holds it.
    whole = row_counts(data.train)
    assert all(count <= whole.get(row, 0) for row, count in row_counts(small.train).items())
    assert torch.equal(small.train.labels, training_subset(data, 200, seed=0).train.labels)
    assert not torch.equal(small.train.images, training_subset(data, 200, seed=1).train.images)
    assert training_subset(data, None, seed=0) is data and training_subset(data, 10**6, seed=0) is data
    assert training_subset(data, len(data.train), seed=0) is data  # all of them: the split as it is, not reshuffled
    with pytest.raises(ValueError, match="no training sample of classes"):
        training_subset(data, 3, seed=0)
    with pytest.raises(ValueError, match="train_size must be an integer"):
        training_subset(data, 2.5, seed=0)
    env = gym.make("ALA-Digits-v0", train_size=300, total_iterations=4, steps_per_action=2, device="cpu").unwrapped
    assert len(env.data.train) == 300


def test_loading_digits_in_a_fresh_process_leaves_the_global_rngs_alone() -> None:
    # The first import of scikit-learn's datasets module draws from Python's global RNG (through rich); only a
    # fresh interpreter imports it for the first time.
    script = (
        "import random, numpy as np, torch\n"
        "states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()\n"
        "from ala_gym.core.data import load_digits\n"
        "load_digits()\n"
        "assert random.getstate() == states[0], 'random'\n"
        "assert (np.random.get_state()[1] == states[1]).all(), 'numpy'\n"
        "assert torch.equal(torch.get_rng_state(), states[2]), 'torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_normalised_inputs_have_zero_mean_and_unit_spread_and_stay_finite_on_constant_channels() -> None:
    """A uint8 image's channel and a float feature come out with zero mean and unit (sample) spread over the
    training split, the image on its [0, 1] scale; a blank channel or a constant feature stays finite (centred,
    not divided by zero)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 2, 3, 3), generator=generator, dtype=torch.uint8)
    images[:, 1] = 7  # a blank channel
    labels = torch.arange(40) % 2
    data = from_user_data((images, labels, images[:4], labels[:4]), val_size=8)
    x = data.normalized_train
    assert torch.isfinite(x).all() and torch.allclose(x[:, 1], torch.zeros(()), atol=1e-4)
    channel = x[:, 0].flatten()
    assert abs(float(channel.mean())) < 1e-5 and abs(float(channel.std()) - 1.0) < 1e-5
    torch.testing.assert_close(data.mean[0], data.train.images[:, 0].float().mean() / 255)
    features = torch.randn(40, 3, generator=generator)
    features[:, 2] = 5.0  # a constant feature
    tabular = from_user_data((features, labels, features[:4], labels[:4]), val_size=8)
    x = tabular.normalized_train
    assert torch.isfinite(x).all() and torch.allclose(x[:, 2], torch.zeros(()))
    assert torch.allclose(x[:, :2].mean(0), torch.zeros(2), atol=1e-5) and torch.allclose(x[:, :2].std(0), torch.ones(2), atol=1e-5)


def test_uint8_spread_is_floored_at_a_thousandth_and_only_there() -> None:
    """A uint8 channel's spread (on the [0, 1] scale) is floored at 1e-3: a channel blank but for at most one faint
    pixel gets exactly the floor, a faint texture (0s and 3s, a spread of about 0.006) keeps its own."""
    images = torch.zeros(32, 2, 2, 2, dtype=torch.uint8)
    images[0, 0, 0, 0] = 1
    images[::2, 1] = 3
    labels = torch.arange(32) % 2
    data = from_user_data((images, labels, images[:4], labels[:4]), val_size=8)
    faint = data.train.images[:, 1].numpy().astype(np.float64) / 255
    assert 1e-3 < faint.std(ddof=1) < 1e-2
    assert float(data.std[0]) == pytest.approx(1e-3, rel=1e-6)
    assert float(data.std[1]) == pytest.approx(faint.std(ddof=1), rel=1e-5)


def test_load_dataset_keeps_one_copy_per_set_of_options() -> None:
    """Loads are shared per name and options: other options load other splits, the same ones the same tensors."""
    default, smaller = load_dataset("digits"), load_dataset("digits", val_size=300)
    reseeded = load_dataset("digits", split_seed=1)
    assert (len(default.val), len(smaller.val), len(reseeded.val)) == (360, 300, 360)
    assert not torch.equal(reseeded.val.labels, default.val.labels)
    assert load_dataset("digits") is default and load_dataset("digits", val_size=300) is smaller


def test_load_dataset_shares_a_load_whose_defaults_are_written_out() -> None:
    """A default given by name is the same load as the default left out, for the package's loaders and one's own."""
    default = load_dataset("digits")
    assert load_dataset("digits", val_size=360, test_size=360, split_seed=0) is default
    assert load_dataset("digits", split_seed=0, device="cpu") is default
    assert load_dataset("digits", split_seed=1) is not default
    calls = []

    def loader() -> tuple:
        calls.append(1)
        return np.arange(40.0).reshape(20, 2), np.arange(20) % 2, np.zeros((4, 2)), np.arange(4) % 2

    register_dataset("cache-defaults", loader)
    try:
        own = load_dataset("cache-defaults", val_size=4)
        assert load_dataset("cache-defaults", val_size=4, split_seed=0) is own and len(calls) == 1
        # Clearing one name's splits loads it again and leaves the others' shared.
        clear_loaded_datasets("cache-defaults")
        assert load_dataset("cache-defaults", val_size=4) is not own and len(calls) == 2
        assert load_dataset("digits") is default
        clear_loaded_datasets()
        assert load_dataset("digits") is not default
    finally:
        LOADERS.pop("cache-defaults", None)
        clear_loaded_datasets("cache-defaults")
    with pytest.raises(TypeError, match="no_such_option"):
        load_dataset("digits", no_such_option=1)
