"""Real classification datasets, held as uint8 tensors on the training device.

One loader per dataset, each going through the dataset's own reader:

* ``load_digits``: scikit-learn's bundled 8x8 digits (1,797 images), the seconds-scale default.
* ``load_fashion_mnist``: torchvision's ``FashionMNIST`` reader over the idx files that Debian's
  ``dataset-fashion-mnist`` installs (gzip-compressed; unpacked once into a cache folder because
  torchvision reads only uncompressed idx files).
* ``load_cifar10``: torchvision's ``CIFAR10`` reader with its md5 integrity check, or, for a
  CIFAR-format folder that carries its own ``MD5SUMS`` (such as a subset), the same reader checked
  against that file instead.

Every loader returns a :class:`ClassificationData` whose three splits live on ``device``; batches are
drawn there with an explicit ``torch.Generator``, uniformly by :class:`BatchSampler` or class-balanced
(P classes x K samples, for metric learning) by :class:`ClassBalancedSampler`; :func:`class_disjoint`
splits any of them by class for retrieval (train on some classes, evaluate on others). CIFAR's augmentation
(4-pixel zero padding, random 32x32 crop, horizontal flip) runs batched on the device too.

Data of one's own: :func:`from_user_data` takes arrays or tensors ``(x_train, y_train, x_test, y_test)`` of any
input shape (tabular ``[N, F]``, signals ``[N, L]`` or ``[N, C, L]``, images ``[N, C, H, W]``; uint8 or any
real dtype) or a pair of map-style ``torch.utils.data.Dataset`` s ``(train, test)`` yielding ``(x, y)``, checks
them and splits them as the loaders do; :func:`register_dataset` gives such data a name.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import numbers
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ala_gym.core.checks import check_int, check_optional_int, worker_registration_hint
from ala_gym.core.files import atomic_file, publish_folder
from ala_gym.core.global_rng import python_random_kept

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


class DataError(RuntimeError):
    """A dataset file is missing or corrupt; the message names the file and how to get it."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when present, else the CPU; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are checked
    against this machine, with a ``ValueError`` that names the fix instead of the driver's message."""
    if str(device) == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    # A process forked after its parent used CUDA cannot use it (torch's "Cannot re-initialize CUDA in forked
    # subprocess", at the first CUDA call): gymnasium's async vector env forks its workers after building one env.
    if resolved.type == "cuda" and getattr(torch.cuda, "_is_in_bad_fork", lambda: False)():
        raise ValueError(
            f"device={str(device)!r} in a process forked after its parent used CUDA, where CUDA cannot run: start the "
            "workers with spawn (gym.make_vec(..., vectorization_mode='async', vector_kwargs={'context': 'spawn'})), "
            "or use device='cpu'"
        )
    if str(device) == "auto":
        return resolved
    if resolved.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if resolved.index is not None and resolved.index >= available or available == 0:
            raise ValueError(
                f"device={str(device)!r} but this machine has {available} CUDA GPU(s) visible to torch; "
                "use device='cpu', or 'auto' (CUDA when present)"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved


def data_home() -> Path:
    """Where the datasets that are not downloaded live (such as the CIFAR-10 subset): ``$ALA_GYM_DATA``,
    else ``$XDG_DATA_HOME/ala_gym`` (``~/.local/share/ala_gym``). It never depends on where the package is
    installed; a clone's ``make`` targets set ``ALA_GYM_DATA`` to ``shared/data`` beside the checkout.

    Data locations are a setting of the machine, never part of a result: benchmarks resolve them here
    at run time and record only the dataset's name.
    """
    configured = os.environ.get("ALA_GYM_DATA")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ala_gym"


def with_data_home(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` as given to an env: a relative ``data_root`` (a dataset's name, such as ``"cifar10-subset"``,
    as results and policies record it) resolved under :func:`data_home`; an absolute one as it is.

    A dataset of the data home is never downloaded (``download=False`` unless the keywords say otherwise): where
    its folder is missing, :class:`DataError` says so at once, rather than a download putting another dataset
    (the full CIFAR-10) under its name."""
    root = env_kwargs.get("data_root")
    if root is None or Path(root).is_absolute():
        return env_kwargs
    folder = data_home() / root
    if not folder.is_dir():
        fix = f"set ALA_GYM_DATA (or --data-root) to the folder that holds {root}/"
        if root == CIFAR10_SUBSET:
            fix += f", or build it from the full CIFAR-10 with {CIFAR10_SUBSET_COMMAND}"
        raise DataError(f"no dataset folder {folder} (the data home is {data_home()}): {fix}")
    return {"download": False, **env_kwargs, "data_root": str(folder)}


CIFAR10_SUBSET = "cifar10-subset"
"""The name of the 6,187-image CIFAR-10 subset's folder in the data home (as results record its ``data_root``)."""
CIFAR10_SUBSET_COMMAND = "python -m ala_gym.benchmarks.cifar10_subset"
"""The command that builds that folder from the full CIFAR-10 (``benchmarks/cifar10_subset.py``)."""


def cifar10_subset_dir() -> Path:
    """The 6,187-image CIFAR-10 subset, in CIFAR's python format with its own ``MD5SUMS``."""
    return data_home() / CIFAR10_SUBSET


def default_cache_dir() -> Path:
    """Where derived files (unpacked idx files, downloads) go: ``$ALA_GYM_CACHE`` or ``~/.cache/ala_gym``.

    An empty ``ALA_GYM_CACHE`` counts as unset (``Path("")`` would be the current working directory).
    """
    configured = os.environ.get("ALA_GYM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "ala_gym"


def _unwritable_cache(folder: Path, exc: OSError, fix: str) -> DataError:
    """A read-only cache folder, or a regular file in its path, named with the setting that moves it."""
    return DataError(f"cannot write to the data cache folder {folder} ({type(exc).__name__}: {exc}); {fix}")


def _check_labels(labels: torch.Tensor, num_classes: int, source: Path | str, fix: str) -> None:
    """Refuse labels outside ``[0, num_classes)``: one stray value would silently add a class to the task."""
    bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if len(bad):
        first = int(bad[0])
        raise DataError(
            f"{source} holds label {int(labels[first])} at position {first} ({len(bad)} of its {len(labels)} labels "
            f"lie outside the {num_classes} classes 0..{num_classes - 1}); {fix}"
        )


@dataclass
class Split:
    """Inputs ``[N, *input_shape]`` and labels ``int64 [N]``, both on the training device.

    The inputs are uint8 (images, scaled to [0, 1] by :meth:`ClassificationData.normalize`) or float32
    (data given as floats or as integers other than uint8); the field keeps the name ``images``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass
class ClassificationData:
    """A dataset split three ways, with what is needed to turn its stored inputs into network inputs."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: torch.Tensor  # per channel (dim 1 of the inputs; per feature for [N, F]), of the training split
    std: torch.Tensor
    augment: bool  # CIFAR-style pad + crop + flip on training batches

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(C, H, W)`` for images, ``(F,)`` for tabular data, any shape otherwise."""
        return tuple(self.train.images.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train.images.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Stored inputs -> float32 network inputs with zero mean and unit variance per channel (per feature
        for ``[N, F]`` data), uint8 scaled to [0, 1] first. Always a new tensor: the stored splits are shared
        (by every child, and by :func:`load_dataset`'s callers) and never written."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x.div_(255.0)  # in place on the copy that float() just made of the uint8 data
        shape = (1, -1) + (1,) * (images.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def same_samples(self, other: ClassificationData) -> bool:
        """Whether ``other`` holds the same samples, split the same way, on the same device (the same object, or
        equal tensors: a copy made in another process)."""
        if other is self:
            return True
        if (self.name, self.num_classes, self.augment, self.device) != (
            other.name, other.num_classes, other.augment, other.device
        ):  # fmt: skip
            return False
        tensors = [(getattr(self, s).images, getattr(other, s).images) for s in ("train", "val", "test")]
        tensors += [(getattr(self, s).labels, getattr(other, s).labels) for s in ("train", "val", "test")]
        tensors += [(self.mean, other.mean), (self.std, other.std)]
        return all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b) for a, b in tensors)

    @cached_property
    def normalized_train(self) -> torch.Tensor:
        """The training images normalised once (float32; batches without augmentation index it): the same
        values as normalising each batch, without paying for it every iteration (what that saves on a small
        model's step is measured on the documentation's "What a step costs" page, ``docs/overhead.md``)."""
        return self.normalize(self.train.images)


def _split_train_val(images: torch.Tensor, labels: torch.Tensor, val_size: int, split_seed: int) -> tuple[Split, Split]:
    val_size = check_int("val_size", val_size, 1)  # a count of samples (a fraction would fail as a slice bound)
    if not 0 < val_size < len(labels) - 1:  # the training split keeps two samples: a spread to normalise by
        raise ValueError(f"val_size must be in (0, {len(labels) - 1}) for {len(labels)} training samples, got {val_size}")
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(labels), generator=generator)
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx])


def _input_statistics(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of training inputs per channel (dim 1) over every other dim, so per feature
    for ``[N, F]`` data; uint8 inputs are scaled to [0, 1] first, as :meth:`ClassificationData.normalize` does."""
    values = inputs.float()
    if inputs.dtype == torch.uint8:
        values = values.div(255.0)
    dims = (0, *range(2, inputs.dim()))
    mean, std = values.mean(dim=dims), values.std(dim=dims)
    if inputs.dtype == torch.uint8:
        return mean, std.clamp_min(1e-3)  # a floor on the [0, 1] pixel scale: a blank channel stays finite
    # Float features share no scale a floor could be set on: a constant one is only centred.
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _assemble(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    val_size: int,
    split_seed: int,
    augment: bool,
    device: torch.device | str,
) -> ClassificationData:
    """Split off validation, compute normalisation and move to ``device``; labels lie in ``[0, num_classes)``
    (checked by the loader, which knows the file to name)."""
    train, val = _split_train_val(train_images, train_labels, val_size, split_seed)
    # Normalisation statistics come from the training split only.
    mean, std = _input_statistics(train.images)
    test = Split(test_images, test_labels)
    device = torch.device(device)

    def to_device(split: Split) -> Split:
        return Split(split.images.to(device).contiguous(), split.labels.to(device))

    return ClassificationData(
        name=name,
        train=to_device(train),
        val=to_device(val),
        test=to_device(test),
        num_classes=num_classes,
        mean=mean.to(device),
        std=std.to(device),
        augment=augment,
    )


def load_digits(
    *, val_size: int = 360, test_size: int = 360, split_seed: int = 0, device: torch.device | str = "cpu"
) -> ClassificationData:
    """scikit-learn's bundled 8x8 digits: 1,797 images, here 1,077 train / 360 val / 360 test by default
    (``val_size`` and ``test_size`` images drawn from ``split_seed``), on ``device``."""
    from importlib.resources import files

    with python_random_kept():  # the first import of scikit-learn's datasets draws from it
        from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are 0..16; scale to the uint8 range so every dataset shares one normalisation path.
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    _check_labels(labels, 10, str(files("sklearn.datasets.data") / "digits.csv.gz"), "reinstall scikit-learn")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed + 1))
    test_idx, rest_idx = order[:test_size], order[test_size:]
    return _assemble(
        "digits",
        images[rest_idx],
        labels[rest_idx],
        images[test_idx],
        labels[test_idx],
        num_classes=10,
        val_size=val_size,
        split_seed=split_seed,
        augment=False,
        device=device,
    )


_REINSTALL_FASHION_MNIST = "reinstall dataset-fashion-mnist (`apt-get install --reinstall dataset-fashion-mnist`)"


def _check_idx(unpacked: Path, source: Path) -> None:
    """Refuse an unpacked idx file that is not what its name says, naming ``source``, the file it came from.

    torchvision's reader takes the header on trust: it fails with a bare assertion or type error, or
    reads a swapped or reshaped file without complaint. Fashion-MNIST's images are ``0 0 0x08 3``
    (unsigned bytes, 3 dims) of 28x28 pixels; its labels ``0 0 0x08 1``.
    """
    images = "-images-" in source.name
    dims = 3 if images else 1
    with open(unpacked, "rb") as handle:
        header = handle.read(4 + 4 * dims)
    size = os.path.getsize(unpacked)
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] != 0x08 or header[3] != dims:
        raise DataError(
            f"Fashion-MNIST file {source} does not hold {'images' if images else 'labels'} (idx magic 0000080{dims}, "
            f"a {dims}-dimensional array of unsigned bytes) but magic {header[:4].hex()}: another file of the set "
            f"under this name, or damaged; {_REINSTALL_FASHION_MNIST}"
        )
    shape = [int.from_bytes(header[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims)]
    promised = 4 + 4 * dims + int(np.prod(shape))
    if len(header) < 4 + 4 * dims or size != promised:
        raise DataError(
            f"Fashion-MNIST file {source} unpacks to {size} bytes but its idx header promises {promised}: "
            f"it is truncated or not an idx file; {_REINSTALL_FASHION_MNIST}"
        )
    if shape[0] == 0:  # torchvision's reader fails on an empty array with a bare ValueError
        raise DataError(f"Fashion-MNIST file {source} holds no {'images' if images else 'labels'}; {_REINSTALL_FASHION_MNIST}")
    if images and shape[1:] != [28, 28]:
        raise DataError(
            f"Fashion-MNIST file {source} holds {shape[1]}x{shape[2]} images, not 28x28; {_REINSTALL_FASHION_MNIST}"
        )


def _file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of ``path``'s bytes under ``hashlib``'s ``algorithm``, read a MiB at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_file(target: Path) -> Path:
    return target.with_name(f"{target.name}.sha256")


def _cached_intact(target: Path) -> bool:
    """Whether ``target`` still holds what was unpacked there: its sha256 matches the one written then.

    A size check alone would reuse a same-size damaged copy for ever; hashing Fashion-MNIST's 55 MB
    costs a fraction of a second.
    """
    try:
        return _checksum_file(target).read_text().strip() == _file_digest(target, "sha256")
    except OSError:  # not unpacked yet, or unpacked by a version that wrote no checksum
        return False


def _gunzip_chunks(source: Path) -> Iterator[bytes]:
    """The unpacked bytes of ``source``; a damaged gzip file is named (write errors stay the caller's)."""
    try:
        with gzip.open(source, "rb") as packed:
            while chunk := packed.read(1 << 20):
                yield chunk
    except (OSError, EOFError) as exc:
        raise DataError(f"Fashion-MNIST file {source} is corrupt ({exc}); {_REINSTALL_FASHION_MNIST}") from exc


def _unpack_idx(source: Path, target: Path) -> None:
    """Unpack ``source`` to ``target`` with its sha256 beside it; OSErrors are the cache folder's."""
    digest = hashlib.sha256()
    with atomic_file(target) as tmp:  # an interrupted unpack never leaves a half file behind
        for chunk in _gunzip_chunks(source):
            digest.update(chunk)
            tmp.write(chunk)
        tmp.close()
        _check_idx(Path(tmp.name), source)
    # Written after the file: an interruption in between leaves a stale or missing checksum, so a re-unpack.
    _checksum_file(target).write_text(digest.hexdigest() + "\n")


def _unpack_fashion_mnist(source_dir: Path, cache_root: Path) -> Path:
    """Unpack the ``*.gz`` idx files of ``source_dir`` once into ``cache_root/<key>/FashionMNIST/raw``.

    The key depends on the source folder and its files' sizes and times, so another source (or an
    updated package) never reuses a stale unpack. Each unpacked file is checked against the sha256
    recorded beside it and unpacked again when it differs. Returns the root to give torchvision's reader.
    """
    sources = [source_dir / f"{name}.gz" for name in _FASHION_MNIST_FILES]
    for source in sources:
        if not source.exists():
            raise DataError(
                f"Fashion-MNIST file {source} is missing. Install it with "
                "`apt-get update && apt-get install -y dataset-fashion-mnist`, or set data_root to a folder "
                f"holding the four idx files {', '.join(p.name for p in sources)}."
            )
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources)
    root = cache_root / hashlib.sha1(stamp.encode()).hexdigest()[:16]
    raw = root / "FashionMNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for name, source in zip(_FASHION_MNIST_FILES, sources):
            if not _cached_intact(raw / name):
                _unpack_idx(source, raw / name)
    except OSError as exc:  # the source's read errors are DataErrors already: this is the cache failing
        fix = "set ALA_GYM_CACHE (or pass cache_dir=) to a writable folder"
        raise _unwritable_cache(cache_root, exc, fix) from exc
    return root


def load_fashion_mnist(
    *,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_size: int = 10000,
    split_seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClassificationData:
    """Fashion-MNIST (70,000 28x28 images) through torchvision's reader: 50k train / 10k val / 10k test.

    ``data_root`` is the folder with the four ``*-idx?-ubyte.gz`` files (default: Debian's
    ``/usr/share/datasets/fashion-mnist``); they are unpacked once under ``cache_dir``.
    """
    from torchvision.datasets import FashionMNIST

    source = Path(data_root) if data_root is not None else FASHION_MNIST_DEBIAN_DIR
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "fashion-mnist"
    root = _unpack_fashion_mnist(source, cache)
    train = FashionMNIST(str(root), train=True, download=False)
    test = FashionMNIST(str(root), train=False, download=False)
    for split, prefix in ((train, "train"), (test, "t10k")):
        labels_file = source / f"{prefix}-labels-idx1-ubyte.gz"
        if len(split.data) != len(split.targets):
            raise DataError(
                f"Fashion-MNIST files {source / f'{prefix}-images-idx3-ubyte.gz'} and "
                f"{labels_file} disagree ({len(split.data)} images, "
                f"{len(split.targets)} labels); reinstall dataset-fashion-mnist or replace both files."
            )
        _check_labels(split.targets, 10, labels_file, _REINSTALL_FASHION_MNIST)
    return _assemble(
        "fashion-mnist",
        train.data.unsqueeze(1),
        train.targets,
        test.data.unsqueeze(1),
        test.targets,
        num_classes=10,
        val_size=val_size,
        split_seed=split_seed,
        augment=False,
        device=device,
    )


_RESTORE = "restore the folder from where it came (for the CIFAR-10 subset: copy it into cifar10-subset of the data home, $ALA_GYM_DATA or else ~/.local/share/ala_gym, again)"


def _read_md5sums(folder: Path) -> dict[str, str]:
    sums = {}
    path = folder / "MD5SUMS"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}); {_RESTORE}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 32 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            raise DataError(
                f"{path}, line {number}, is not '<md5>  <file name>' ({line.strip()[:60]!r}); {_RESTORE}, "
                "or rewrite it with `md5sum batches.meta data_batch_* test_batch > MD5SUMS` in that folder"
            )
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


def _check_cifar_batch(entry: object) -> None:
    """Raise ValueError unless ``entry`` is a CIFAR-10 batch: N x 3072 uint8 rows and N labels in 0..9."""
    if not isinstance(entry, dict) or not {"data", "labels"} <= entry.keys():
        raise ValueError("not a CIFAR-10 batch dictionary")
    data, labels = entry["data"], np.asarray(entry["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"its data is {type(data).__name__} {shape} {getattr(data, 'dtype', '')}, not N x 3072 uint8")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(f"its labels are {labels.dtype} of shape {labels.shape}, not {len(data)} integers (one per image)")
    bad = np.flatnonzero((labels < 0) | (labels >= 10))
    if len(bad):
        raise ValueError(f"label {labels[bad[0]]} at position {bad[0]} is outside the 10 classes 0..9")


def _check_cifar_pickles(folder: Path) -> None:
    """Name the file that is not a CIFAR-10 batch: it does not unpickle, or holds data of another shape or
    labels outside the ten classes (which torchvision's reader would reshape or pass on without complaint)."""
    for name in _CIFAR10_FILES + ["batches.meta"]:
        try:
            with open(folder / name, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            if name != "batches.meta":
                _check_cifar_batch(entry)
            elif not isinstance(entry, dict) or "label_names" not in entry:
                raise ValueError("not a CIFAR-10 batches.meta dictionary")
        except ModuleNotFoundError as exc:
            # Arrays pickled under NumPy 2 name its numpy._core modules, which NumPy 1 lacks (1.26.1 on holds a few
            # aliases, enough for pickle protocol 2, as the CIFAR-10 subset is written): a sound file all the same.
            if (exc.name or "").startswith("numpy._core") and int(np.__version__.split(".")[0]) < 2:
                raise DataError(
                    f"CIFAR-10 file {folder / name} was written by NumPy 2, which NumPy {np.__version__} cannot read "
                    f"(no module {exc.name!r}): pip install 'numpy>=2', or write the folder anew under this NumPy"
                ) from exc
            raise DataError(
                f"CIFAR-10 file {folder / name} needs module {exc.name!r} to unpickle ({exc}): install it, or write "
                "the file anew holding only lists and NumPy arrays, as CIFAR-10's own batches do"
            ) from exc
        except Exception as exc:  # any other unpickling failure means the same thing: the file is damaged
            raise DataError(
                f"CIFAR-10 file {folder / name} is truncated or not a CIFAR-10 python batch ({type(exc).__name__}: "
                f"{exc}), although it matches {folder / 'MD5SUMS'} (which was written after the damage); {_RESTORE}"
            ) from exc


def _cifar10_reader_class():
    """torchvision's CIFAR10, told to check a folder's own MD5SUMS instead of the full dataset's sums."""
    from torchvision.datasets import CIFAR10

    class CIFAR10WithMD5SUMS(CIFAR10):
        base_folder = ""  # the files lie directly in root

        def _check_integrity(self) -> bool:
            folder = Path(self.root)
            sums = _read_md5sums(folder)
            for name in _CIFAR10_FILES + ["batches.meta"]:
                path = folder / name
                if name not in sums:
                    raise DataError(f"{folder / 'MD5SUMS'} has no checksum for {name}; {_RESTORE}")
                if not path.exists():
                    raise DataError(f"CIFAR-10 file {path} is missing (listed in {folder / 'MD5SUMS'}); {_RESTORE}")
                if _file_digest(path, "md5") != sums[name]:
                    raise DataError(
                        f"CIFAR-10 file {path} is corrupt: its md5 does not match {folder / 'MD5SUMS'}; {_RESTORE}"
                    )
            return True

        def _load_meta(self) -> None:
            # torchvision checks batches.meta against the full dataset's md5; _check_integrity has
            # already checked it against this folder's MD5SUMS.
            with open(Path(self.root) / "batches.meta", "rb") as handle:
                self.classes = pickle.load(handle, encoding="latin1")["label_names"]
            self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    return CIFAR10WithMD5SUMS


CIFAR10_SUBSET_SIZES = {
    "data_batch_1": 1102, "data_batch_2": 1017, "data_batch_3": 1017, "data_batch_4": 1017, "data_batch_5": 1017,
    "test_batch": 1017,
}  # fmt: skip
"""The CIFAR-10 subset: how many images, from the start of each batch file of the full dataset (in its order),
its file of the same name holds: 5,170 training and 1,017 test images."""
CIFAR10_SUBSET_SHA256 = {
    "data_batch_1": "16e3e5d9520f7c418549650073ed7b307c8553e3576cc639062960eeb44b517c",
    "data_batch_2": "b9d8c9cfd75775a4efac917c8624fd456880eaaa61790ebc452e274ebf6aa79e",
    "data_batch_3": "858c89d41d6d0bf9bf8dde75e9995c12dd145cba77cf7cbc5b8f5b458ecd4be1",
    "data_batch_4": "d96b8f9704fb969af1bc166d828f8396520be13808737177389ffe1cc1746a96",
    "data_batch_5": "9babe3997b4524dd003e864b06d5f20140013cd7186d5841879eaf6949dc8fcc",
    "test_batch": "1b3ad6760dd7eb4d6340dedbdb7cd5c2c2a492573606e660f1d76278cd3a51de",
}
"""Per file of the subset that the committed results trained and tested on: the sha256 of its images and labels
(:func:`cifar_batch_sha256`), which a subset built anew must match, whatever bytes its pickles hold."""


def cifar_batch_sha256(entry: dict) -> str:
    """The sha256 of a CIFAR-10 batch's contents: its ``N x 3072`` uint8 rows, then its labels as little-endian int64."""
    data = np.ascontiguousarray(entry["data"], dtype=np.uint8)
    return hashlib.sha256(data.tobytes() + np.asarray(entry["labels"], dtype="<i8").tobytes()).hexdigest()


def build_cifar10_subset(source: str | Path, out: str | Path, sizes: dict[str, int] | None = None) -> None:
    """Write the CIFAR-10 subset into the new folder ``out`` from the full dataset's python batches in ``source``.

    ``source`` is the extracted ``cifar-10-batches-py`` folder (or torchvision's root that holds it). Each batch
    file of ``out`` holds the first ``sizes[name]`` images of the full file of that name, in their order (default
    :data:`CIFAR10_SUBSET_SIZES`, then checked against :data:`CIFAR10_SUBSET_SHA256`: the same images and labels
    as the subset of the committed results); ``batches.meta`` is copied as it is, and an ``MD5SUMS`` file lists
    every file, which :func:`load_cifar10` checks. The folder is written beside ``out`` and moved there when
    complete; an existing ``out`` is refused, never overwritten.
    """
    source, out = Path(source), Path(out)
    if (source / "cifar-10-batches-py").is_dir():
        source = source / "cifar-10-batches-py"
    if out.exists():
        raise DataError(f"{out} already exists: move it away, or pass another folder to build the subset in")
    expected = CIFAR10_SUBSET_SHA256 if sizes is None else {}
    sizes = CIFAR10_SUBSET_SIZES if sizes is None else sizes
    how = "extract cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a) there, or let torchvision download it"
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name, size in sizes.items():
            entry = _subset_batch(source / name, size, how)
            if name in expected and cifar_batch_sha256(entry) != expected[name]:
                raise DataError(
                    f"the first {size} images of {source / name} are not those of the CIFAR-10 subset that the committed "
                    f"results used (sha256 of images and labels differs); {how}"
                )
            (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        try:
            (folder / "batches.meta").write_bytes((source / "batches.meta").read_bytes())
        except OSError as exc:
            raise DataError(f"cannot read {source / 'batches.meta'} ({exc}); {how}") from exc
        names = ["batches.meta", *sizes]
        (folder / "MD5SUMS").write_text("".join(f"{_file_digest(folder / n, 'md5')}  {n}\n" for n in names))
        publish_folder(folder, out)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _subset_batch(path: Path, size: int, how: str) -> dict[str, Any]:
    """The first ``size`` images of the full CIFAR-10 batch file ``path``, as a batch of the subset."""
    try:
        with open(path, "rb") as handle:
            full = pickle.load(handle, encoding="latin1")
        _check_cifar_batch(full)
    except Exception as exc:  # missing, or not a CIFAR-10 batch
        raise DataError(f"cannot read the full CIFAR-10 batch {path} ({type(exc).__name__}: {exc}); {how}") from exc
    if len(full["data"]) < size:
        raise DataError(f"{path} holds {len(full['data'])} images, fewer than the subset's {size}; {how}")
    return {
        "batch_label": f"{full.get('batch_label', path.name)} (first {size} images only)",
        "labels": [int(label) for label in full["labels"][:size]],
        "data": np.ascontiguousarray(full["data"][:size]),
    }


def load_cifar10(
    *,
    data_root: str | os.PathLike | None = None,
    download: bool = True,
    val_size: int | None = None,
    split_seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClassificationData:
    """CIFAR-10 through torchvision's reader: the paper's 40k train / 10k val (seeded) / 10k test split.

    ``data_root`` is either torchvision's root (holding ``cifar-10-batches-py/``; default
    ``<cache>/cifar10``, downloaded there on first use when ``download`` and the machine is online) or
    a CIFAR-format folder with its own ``MD5SUMS``, checked against it. ``val_size`` defaults to a
    fifth of the training images (10,000 for the full dataset).
    """
    from torchvision.datasets import CIFAR10

    root = Path(data_root) if data_root is not None else default_cache_dir() / "cifar10"
    if root.name == "cifar-10-batches-py" and not (root / "MD5SUMS").exists():
        root = root.parent  # the extracted archive's folder itself: torchvision's root is the one above it
    if (root / "MD5SUMS").exists():
        reader = _cifar10_reader_class()
        try:
            train, test = reader(str(root), train=True), reader(str(root), train=False)
        except DataError:
            raise
        except Exception:  # torchvision's unpickling of a damaged file: find and name it
            _check_cifar_pickles(root)
            raise
        # Checksums written by whoever made the folder vouch only for the bytes, not for their shapes or labels.
        _check_cifar_pickles(root)
    else:
        if any((root / name).exists() for name in ("batches.meta", "data_batch_1", "test_batch")):
            # A CIFAR-format folder without its checksums: torchvision would look for cifar-10-batches-py under it
            # and report the full dataset missing, which points away from the real fix.
            raise DataError(
                f"{root} holds CIFAR-10 batch files but no MD5SUMS, which a CIFAR-format folder needs; {_RESTORE}, "
                "or write it with `md5sum batches.meta data_batch_* test_batch > MD5SUMS` in that folder (for the full "
                "CIFAR-10, name its extracted folder cifar-10-batches-py: it is then checked against the published sums)"
            )
        if download:  # torchvision's download would fail on an unusable folder with a bare OSError
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                fix = "set data_root to a writable folder"
                if data_root is None:
                    fix = "set ALA_GYM_CACHE (or data_root) to a writable folder"
                raise _unwritable_cache(root, exc, fix) from exc
        # torchvision checks these files against the published dataset's md5 sums, which vouch for shapes and labels.
        try:
            train = CIFAR10(str(root), train=True, download=download)
            test = CIFAR10(str(root), train=False, download=download)
        except (RuntimeError, OSError) as exc:  # torchvision's integrity failure, or no network
            raise DataError(
                f"CIFAR-10 not found or corrupt under {root / 'cifar-10-batches-py'} ({exc}). Fill that folder "
                "with the extracted cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a), run once "
                "with download on (the default) on a machine with internet access, or set data_root to a CIFAR-format "
                "folder that carries an MD5SUMS file."
            ) from exc
    train_images = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()
    test_images = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous()
    train_labels = torch.tensor(train.targets, dtype=torch.int64)
    return _assemble(
        "cifar10",
        train_images,
        train_labels,
        test_images,
        torch.tensor(test.targets, dtype=torch.int64),
        num_classes=10,
        val_size=val_size if val_size is not None else len(train_labels) // 5,
        split_seed=split_seed,
        augment=True,
        device=device,
    )


LOADERS: dict[str, Callable[..., ClassificationData]] = {
    "digits": load_digits, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10,
}  # fmt: skip
"""Dataset names and their loaders (keywords ``val_size``, ``split_seed``, ``device`` and the loader's own);
:func:`register_dataset` adds names."""
_BUILTIN_DATASETS = frozenset(LOADERS)

_CACHE: dict[tuple, ClassificationData] = {}


def load_dataset(name: str, *, device: torch.device | str = "cpu", **kwargs: Any) -> ClassificationData:
    """Load ``name`` (a key of ``LOADERS``) once per process and options; later calls share the tensors.

    Sharing is safe because nothing writes to a loaded split: batches are gathered copies. Each distinct set
    of options (another ``split_seed``, ``val_size`` or device) keeps a copy of its own for the process's life:
    a sweep over many splits in one process frees them with :func:`clear_loaded_datasets`.
    """
    if name not in LOADERS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}, or register_dataset it in this process"
            + worker_registration_hint()
        )
    key = (name, str(torch.device(device)), _options_key(LOADERS[name], kwargs))
    if key not in _CACHE:
        _CACHE[key] = LOADERS[name](device=device, **kwargs)
    return _CACHE[key]


def clear_loaded_datasets(name: str | None = None) -> None:
    """Forget what :func:`load_dataset` loaded (only ``name``'s splits, or all): the memory goes once no env
    holds them, and the next load reads the data again."""
    for key in [key for key in _CACHE if name is None or key[0] == name]:
        del _CACHE[key]


def _options_key(loader: Callable[..., ClassificationData], kwargs: dict[str, Any]) -> tuple:
    """``kwargs`` with the loader's defaults filled in, so that a default written out shares the load made
    without it."""
    try:
        bound = inspect.signature(loader).bind_partial(**kwargs)
    except TypeError:  # a keyword the loader does not take: its own call names it
        return tuple(sorted((k, str(v)) for k, v in kwargs.items()))
    bound.apply_defaults()
    return tuple(sorted((k, str(v)) for k, v in bound.arguments.items() if k != "device"))


UserData = tuple[Any, Any, Any, Any] | tuple[Dataset, Dataset]
"""Data of one's own: ``(x_train, y_train, x_test, y_test)`` arrays or tensors, or map-style Datasets
``(train, test)`` yielding ``(x, y)``."""


def register_dataset(name: str, loader: Callable[[], UserData]) -> None:
    """Make ``name`` a dataset name (``dataset=name`` in every classification env, ``load_dataset(name)``).

    ``loader()`` returns :data:`UserData`; it runs once per process and split options (``load_dataset``
    caches the result), and its data goes through :func:`from_user_data`. Registering a name again replaces
    its loader and drops what was loaded under it; the package's own names cannot be replaced.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a dataset name must be a non-empty string, got {name!r}")
    if name in _BUILTIN_DATASETS:
        raise ValueError(
            f"{name!r} is one of the package's datasets ({sorted(_BUILTIN_DATASETS)}); choose another name"
        )
    if not callable(loader):
        raise ValueError(f"loader must be a callable returning the data, got {type(loader).__name__}")
    LOADERS[name] = partial(_load_registered, name, loader)
    clear_loaded_datasets(name)


def _load_registered(
    name: str, loader: Callable[[], UserData], *, val_size: int | None = None, split_seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClassificationData:  # fmt: skip
    return from_user_data(loader(), name=name, val_size=val_size, split_seed=split_seed, device=device)


def from_user_data(
    data: UserData, *, name: str = "custom", val_size: int | None = None, split_seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClassificationData:  # fmt: skip
    """Data of one's own as a :class:`ClassificationData`, checked, split and normalised like a loader's.

    ``data`` is ``(x_train, y_train, x_test, y_test)`` (numpy arrays, tensors or anything ``np.array``
    reads) or a pair of map-style ``torch.utils.data.Dataset`` s ``(train, test)`` whose items are ``(x, y)``
    with ``x`` a tensor or array. Inputs are ``[N, *input_shape]``: uint8 stays uint8 (images, scaled to
    [0, 1] when normalised), every other real dtype becomes float32. Labels are 1-D integer class indices;
    the class count is the largest label plus one. ``val_size`` samples (default: a fifth) of the training
    part, drawn from ``split_seed``, become the validation split; normalisation statistics (per channel,
    per feature for ``[N, F]``) come from the rest. The splits are copies on ``device``: the caller's arrays
    are never written, and changing them later changes nothing here. ``name`` names the data in messages.

    Raises ``ValueError`` naming the problem: inputs that are not numbers or not finite, shapes that do not
    match, labels that are not non-negative integers, fewer than two classes, or a class without samples
    in the training or validation split (that class's reward statistics would be undefined).
    """
    x_train, y_train, x_test, y_test = _user_tensors(data)
    if x_test.shape[1:] != x_train.shape[1:] or (x_test.dtype == torch.uint8) != (x_train.dtype == torch.uint8):
        raise ValueError(
            f"dataset: x_train is {x_train.dtype} {tuple(x_train.shape)} but x_test is {x_test.dtype} "
            f"{tuple(x_test.shape)}; both need one input shape and both uint8 or neither"
        )
    if val_size is None:
        val_size = len(y_train) // 5
        if val_size < 1:
            raise ValueError(
                f"dataset: {len(y_train)} training samples leave none for validation at the default val_size (a "
                f"fifth); pass val_size=k with 0 < k < {len(y_train) - 1}, or give more samples"
            )
    num_classes = _user_classes(y_train, y_test)
    if num_classes < 2:
        raise ValueError("dataset: the labels hold only class 0; classification needs at least two classes")
    result = _assemble(
        name, x_train, y_train, x_test, y_test, num_classes=num_classes, val_size=val_size, split_seed=split_seed,
        augment=False, device=device,
    )  # fmt: skip
    for split, which in ((result.train, "training"), (result.val, "validation")):
        missing = torch.nonzero(torch.bincount(split.labels, minlength=num_classes) == 0).flatten().tolist()
        if missing:
            raise ValueError(
                f"dataset: class(es) {_listed(missing)} of 0..{num_classes - 1} have no sample in the {which} split "
                f"({len(split)} samples; val_size={val_size}, split_seed={split_seed}); labels must be "
                "consecutive class indices, and every class needs samples on both sides of the split "
                "(change val_size or split_seed)"
            )
    return result


def _listed(values: list[int], limit: int = 10) -> str:
    """``values`` for a message: the first ``limit`` of them, and how many more there are."""
    return str(values[:limit]) + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _user_classes(y_train: torch.Tensor, y_test: torch.Tensor) -> int:
    """The class count of checked labels: the training labels are the classes ``0..C-1``, each with a sample,
    and every test label is one of them. A label far beyond the others is named with its position before
    anything is sized by it (a count array of a billion classes would not fit in memory)."""
    classes = torch.unique(y_train)  # sorted
    largest = int(classes[-1])
    if len(classes) != largest + 1:
        present = set(classes.tolist())
        first_missing = [c for c in range(min(largest, len(classes) + 10)) if c not in present][:10]
        position = int(torch.nonzero(y_train == largest)[0])
        raise ValueError(
            f"dataset: y_train's labels are not the consecutive classes 0..{largest}: its largest, {largest} (at "
            f"position {position}), leaves {largest + 1 - len(classes)} class(es) without a sample (the first: "
            f"{first_missing}); labels must be class indices 0..C-1, each with training samples"
        )
    unknown = torch.nonzero(~torch.isin(y_test, classes)).flatten()
    if len(unknown):
        first = int(unknown[0])
        raise ValueError(
            f"dataset: y_test holds label {int(y_test[first])} at position {first} ({len(unknown)} such label(s)), "
            f"which is no class of y_train's 0..{largest}; every test label must be a class the model trains on"
        )
    return largest + 1


def _user_tensors(data: UserData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four checked tensors of :func:`from_user_data`'s ``data``, each a copy of its own."""
    if isinstance(data, (tuple, list)) and len(data) == 4:
        arrays = [_as_tensor(value, what) for value, what in zip(data, ("x_train", "y_train", "x_test", "y_test"))]
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Dataset) for d in data):
        arrays = [*_dataset_tensors(data[0], "train"), *_dataset_tensors(data[1], "test")]
    else:
        raise ValueError(
            "dataset must be a registered name, (x_train, y_train, x_test, y_test) arrays or tensors, or two "
            f"map-style torch Datasets (train, test); got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    x_train, y_train, x_test, y_test = arrays
    return (
        _user_inputs(x_train, "x_train"), _user_labels(y_train, len(x_train), "y_train", "x_train"),
        _user_inputs(x_test, "x_test"), _user_labels(y_test, len(x_test), "y_test", "x_test"),
    )  # fmt: skip


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    """``value`` as a tensor of numbers (a tensor is detached, anything else read by ``np.array``)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            array = np.array(value)
        except (TypeError, ValueError) as exc:  # ragged nesting, unconvertible objects
            raise ValueError(f"dataset: {what} is not an array of numbers ({exc})") from None
        if array.dtype.kind not in "biufc":  # complex: refused below, for tensors too
            raise ValueError(f"dataset: {what} must hold numbers, got numpy dtype {array.dtype}")
        tensor = torch.from_numpy(array)
    if tensor.is_complex():
        raise ValueError(f"dataset: {what} must hold real numbers, got {tensor.dtype}")
    return tensor


def _user_inputs(inputs: torch.Tensor, what: str) -> torch.Tensor:
    """A copy of ``inputs``: uint8 kept (images), any other dtype as float32; refused when not ``[N, ...]``
    or not finite (a NaN would make every child's loss NaN at its first batch)."""
    if inputs.dim() < 2 or len(inputs) == 0:
        raise ValueError(
            f"dataset: {what} has shape {tuple(inputs.shape)}; inputs must be [N, ...] with N > 0, one row per "
            "sample (a single feature is [N, 1])"
        )
    if inputs.dtype == torch.uint8:
        return inputs.clone()
    inputs = inputs.to(torch.float32, copy=True)
    finite = torch.isfinite(inputs.flatten(1)).all(dim=1)
    if not finite.all():
        first = int(torch.nonzero(~finite)[0])
        raise ValueError(
            f"dataset: {what} holds NaN or infinite values, or values beyond float32's range (about 3.4e38), in which "
            f"the children train (first in sample {first}); impute, drop or rescale them"
        )
    return inputs


def _user_labels(labels: torch.Tensor, count: int, what: str, inputs_what: str) -> torch.Tensor:
    """``labels`` as an int64 copy, refused unless they are ``count`` non-negative integers in one dimension."""
    if labels.dim() != 1:
        raise ValueError(
            f"dataset: {what} has shape {tuple(labels.shape)}; labels must be 1-D, one class index per sample"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"dataset: {what} is {labels.dtype}; labels must be integer class indices 0..C-1 (convert them first: "
            "y.astype(int) for a numpy array, y.long() for a tensor)"
        )
    if len(labels) != count:
        raise ValueError(f"dataset: {inputs_what} holds {count} samples but {what} {len(labels)} labels")
    if labels.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch has no min or max for them: as int64
        values = labels.cpu().numpy()
        too_large = values > np.iinfo(np.int64).max  # would wrap to a negative int64
        if too_large.any():
            first = int(np.argmax(too_large))
            raise ValueError(
                f"dataset: {what} holds label {int(values[first])} at position {first}; labels must be class indices 0..C-1"
            )
        labels = torch.from_numpy(values.astype(np.int64))
    if len(labels) and labels.min() < 0:
        first = int(torch.nonzero(labels < 0)[0])
        raise ValueError(
            f"dataset: {what} holds label {int(labels[first])} at position {first}; labels must be class indices 0..C-1"
        )
    return labels.to(torch.int64, copy=True)


def _dataset_tensors(dataset: Dataset, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(x, y)`` item of a map-style Dataset, stacked into inputs and labels."""
    try:
        items = [dataset[index] for index in range(len(dataset))]  # type: ignore[arg-type]
    except (TypeError, NotImplementedError) as exc:  # an iterable-style Dataset has neither len() nor [i]
        raise ValueError(f"dataset: the {which} Dataset must be map-style, with len() and [i] ({exc})") from None
    if not items:
        raise ValueError(f"dataset: the {which} Dataset is empty")
    inputs, labels = [], []
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(
                f"dataset: item {index} of the {which} Dataset is a {type(item).__name__}, not an (x, y) pair"
            )
        if not isinstance(item[0], (torch.Tensor, np.ndarray)):  # a PIL image would read as [H, W, C]
            raise ValueError(
                f"dataset: x of item {index} of the {which} Dataset is a {type(item[0]).__name__}; items must hold "
                "tensors or arrays (for torchvision datasets, transform=transforms.PILToTensor())"
            )
        inputs.append(_as_tensor(item[0], f"x of item {index} of the {which} Dataset"))
        labels.append(_as_tensor(item[1], f"y of item {index} of the {which} Dataset"))
    for values, kind in ((inputs, "x"), (labels, "y")):
        shapes = sorted({tuple(value.shape) for value in values})
        if len(shapes) > 1:
            raise ValueError(
                f"dataset: the {which} Dataset's {kind} come in several shapes ({shapes[:3]}); they need one"
            )
    return torch.stack(inputs), torch.stack(labels)


def training_subset(data: ClassificationData, size: int | None, seed: int) -> ClassificationData:
    """``data`` with ``size`` of its training samples, drawn from ``seed`` (all of them for None or a size at
    least the split's); validation, test and normalisation statistics unchanged. The tensors are shared."""
    size = check_optional_int("train_size", size, 1)
    if size is None or size >= len(data.train):
        return data
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed + 3))[:size]
    train = data.train.subset(order.to(data.train.labels.device))
    missing = sorted(set(range(data.num_classes)) - set(torch.unique(train.labels).tolist()))
    if missing:
        raise ValueError(f"train_size={size} leaves no training sample of classes {missing}; choose a larger train_size")
    return replace(data, train=train)


def class_disjoint(
    data: ClassificationData,
    train_classes: Sequence[int] | None = None,
    val_classes: Sequence[int] | None = None,
    test_classes: Sequence[int] | None = None,
) -> ClassificationData:
    """The retrieval protocol of metric learning: train on some classes, validate and test on others.

    Each split keeps only its own images of its classes: training images of ``train_classes`` (default:
    the first half of the classes, ``0 .. C//2 - 1``, so 0-4 of Fashion-MNIST's and CIFAR-10's ten),
    validation images of ``val_classes`` and test images of ``test_classes`` (both default to the
    classes not trained on: 5-9). Labels keep their original values (retrieval compares them only for
    equality) and ``num_classes`` stays that of ``data``. Normalisation statistics are ``data``'s (of its
    whole training split). Works for any :class:`ClassificationData`, so any labelled image dataset with
    a loader gets the protocol. The tensors stay on ``data``'s device.
    """
    num_classes = data.num_classes
    for name, classes in (("train_classes", train_classes), ("val_classes", val_classes), ("test_classes", test_classes)):
        if classes is not None and (isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable)):
            raise ValueError(f"{name} must be a list of at least 2 distinct classes in [0, {num_classes}), got {classes!r}")
    # As lists: a generator given would be used up by the first pass over it.
    train_classes = range(num_classes // 2) if train_classes is None else list(train_classes)
    held_out = [c for c in range(num_classes) if c not in set(train_classes)]
    val_classes = held_out if val_classes is None else list(val_classes)
    test_classes = held_out if test_classes is None else list(test_classes)
    for name, classes in (("train_classes", train_classes), ("val_classes", val_classes), ("test_classes", test_classes)):
        integers = all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in classes)
        if not integers or len(set(classes)) < 2 or any(not 0 <= c < num_classes for c in classes):
            raise ValueError(f"{name} must hold at least 2 distinct classes in [0, {num_classes}), got {list(classes)}")
    shared = set(map(int, train_classes)) & (set(map(int, val_classes)) | set(map(int, test_classes)))
    if shared:
        raise ValueError(f"classes {sorted(shared)} are both trained on and evaluated on; the splits must be class-disjoint")

    def keep(split: Split, classes: Sequence[int]) -> Split:
        wanted = torch.tensor([int(c) for c in classes], device=split.labels.device)
        return split.subset(torch.nonzero(torch.isin(split.labels, wanted)).flatten())

    return replace(
        data,
        name=f"{data.name}-disjoint",
        train=keep(data.train, train_classes),
        val=keep(data.val, val_classes),
        test=keep(data.test, test_classes),
    )


class BatchSampler:
    """Draws training batches on the data's device: reshuffled epochs, optional CIFAR augmentation.

    All randomness comes from ``generator`` (a ``torch.Generator`` on the data's device), so two samplers
    with equally seeded generators yield identical batches.
    """

    def __init__(self, data: ClassificationData, batch_size: int, generator: torch.Generator) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.batch_size = min(batch_size, len(data.train))
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.int64, device=data.device)
        self._position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one normalised (and, for CIFAR, augmented) batch ``(inputs, labels)``."""
        if self._position + self.batch_size > len(self._order):
            # Drop the ragged tail so every batch has the same size (what the vectorised path needs).
            self._order = torch.randperm(len(self.data.train), generator=self.generator, device=self.data.device)
            self._position = 0
        index = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return training_batch(self.data, index, self.generator)


class ClassBalancedSampler:
    """P x K batches for metric learning: ``classes_per_batch`` (P) distinct classes drawn uniformly, then
    ``samples_per_class`` (K) distinct training samples of each, all on the data's device.

    Only classes with at least K training samples are drawn (a ``ValueError`` if fewer than P have them).
    All randomness comes from ``generator``; drawing a batch needs no host synchronisation. Batches hold
    ``P * K`` samples, class by class (the K samples of the first class, then the next).
    """

    def __init__(
        self, data: ClassificationData, classes_per_batch: int, samples_per_class: int, generator: torch.Generator
    ) -> None:
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(f"P and K must be positive, got P={classes_per_batch}, K={samples_per_class}")
        labels = data.train.labels
        counts = torch.bincount(labels, minlength=data.num_classes)
        eligible = torch.nonzero(counts >= samples_per_class).flatten()
        if len(eligible) < classes_per_batch:
            raise ValueError(
                f"only {len(eligible)} classes have {samples_per_class} training samples; need P={classes_per_batch}: "
                "lower P or K"
            )
        # [classes, max count] training indices of each eligible class, padded (the padding is never drawn).
        width = int(counts[eligible].max())
        members = torch.zeros(len(eligible), width, dtype=torch.int64, device=labels.device)
        for row, label in enumerate(eligible.tolist()):
            index = torch.nonzero(labels == label).flatten()
            members[row, : len(index)] = index
        self.data, self.generator = data, generator
        self.classes_per_batch, self.samples_per_class = classes_per_batch, samples_per_class
        self._members, self._counts = members, counts[eligible]
        self.batch_size = classes_per_batch * samples_per_class

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one normalised (and, for CIFAR, augmented) P x K batch ``(inputs, labels)``."""
        device = self.data.device
        rows = torch.randperm(len(self._members), generator=self.generator, device=device)[: self.classes_per_batch]
        # K distinct positions per class: the K smallest of uniform keys, the padding keyed out of reach.
        keys = torch.rand(len(rows), self._members.shape[1], generator=self.generator, device=device)
        padding = torch.arange(self._members.shape[1], device=device) >= self._counts[rows, None]
        positions = keys.masked_fill(padding, 2.0).argsort(dim=1)[:, : self.samples_per_class]
        index = self._members[rows[:, None], positions].flatten()
        return training_batch(self.data, index, self.generator)


def training_batch(
    data: ClassificationData, index: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training samples ``index`` (any shape; the batched children's is ``[N, B]``), normalised (and, for CIFAR,
    augmented with ``generator``), with their labels."""
    if data.augment:
        images = random_crop_flip(take_rows(data.train.images, index), generator)
        return data.normalize(images), take_rows(data.train.labels, index)
    return take_rows(data.normalized_train, index), take_rows(data.train.labels, index)


def take_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]`` for an integer ``index`` of any shape, by ``index_select``: the same values, several
    times faster on a CPU than advanced indexing for the batched children's ``[N, B]`` batches."""
    return tensor.index_select(0, index.flatten()).view(*index.shape, *tensor.shape[1:])


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Batched 4-pixel zero-pad, random crop back to size, and random horizontal flip (uint8 in, uint8 out)."""
    n, _, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=device)
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    rows = offsets[0, :, None] + torch.arange(h, device=device)  # [n, h]
    cols = offsets[1, :, None] + torch.arange(w, device=device)  # [n, w]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indices separated by a slice move to the front: result is [n, h, w, C].
    crops = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()
