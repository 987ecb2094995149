"""``python -m ala_gym.benchmarks.compare``: the command line of :mod:`ala_gym.benchmarks.compare.cli`."""

from ala_gym.benchmarks.compare.cli import main

if __name__ == "__main__":
    # argparse would name the command after this file (__main__.py); its usage and errors say compare.py.
    main(prog="compare.py")
