"""Build the 6,187-image CIFAR-10 subset that the CIFAR-10 comparisons run on, from the full dataset.

The subset holds the first 1,102 images of the full dataset's first training batch, the first 1,017 of each
other training batch and of the test batch, in their order (5,170 training and 1,017 test images), in
CIFAR-10's python format with an ``MD5SUMS`` file of its own. The images and labels are checked against
those the committed results used (``ala_gym.core.data.CIFAR10_SUBSET_SHA256``). The folder goes into the data
home, where the presets look for it (``$ALA_GYM_DATA/cifar10-subset``, else ``~/.local/share/ala_gym/cifar10-subset``):

    python -m ala_gym.benchmarks.cifar10_subset --cifar10 ~/data/cifar10 --download

``--cifar10`` is torchvision's root (holding ``cifar-10-batches-py/``) or the extracted batches folder
itself; ``--download`` lets torchvision fetch the full dataset there first (170 MB, checked against its
published md5 sums) on a machine with internet access.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ala_gym.agents.cli import DescriptionFormatter, OneLineParser, interrupted
from ala_gym.core.data import DataError, build_cifar10_subset, cifar10_subset_dir


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=DescriptionFormatter)
    parser.add_argument("--cifar10", type=Path, required=True, help="the full CIFAR-10: torchvision's root or cifar-10-batches-py/")
    parser.add_argument("--download", action="store_true", help="let torchvision download the full dataset into --cifar10 first")
    parser.add_argument("--out", type=Path, help="the folder to create (default: cifar10-subset in the data home)")
    args = parser.parse_args(argv)
    out = args.out or cifar10_subset_dir()
    try:
        if args.download:
            from torchvision.datasets import CIFAR10

            try:
                CIFAR10(str(args.cifar10), train=True, download=True)
            except (RuntimeError, OSError) as exc:  # no network, an unwritable folder, a failed checksum
                raise DataError(f"torchvision could not download CIFAR-10 into {args.cifar10} ({exc})") from exc
        build_cifar10_subset(args.cifar10, out)
    except DataError as exc:
        parser.exit(2, f"cifar10_subset: {exc}\n")
    except OSError as exc:  # where the subset would go: under a file, or a folder this user may not write
        parser.exit(2, f"cifar10_subset: cannot write {out} ({exc.strerror or exc}); choose another --out\n")
    except KeyboardInterrupt:  # the subset is built in a temporary folder, removed on the way out
        interrupted(parser.prog, f"{out} was not written; the same command starts again")
    print(f"wrote the CIFAR-10 subset to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
