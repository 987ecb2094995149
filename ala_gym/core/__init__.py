"""The torch-only core: child training that knows nothing of gymnasium, envs, wrappers or agents.

``import ala_gym.core`` itself imports nothing: submodules are imported by name
(``from ala_gym.core.sgd import sgd_step``). ``tests/test_architecture.py`` keeps this package free
of gymnasium, stable-baselines3, ``ala_gym.envs``, ``agents`` and ``benchmarks``.

* :mod:`ala_gym.core.data`: dataset registry, splits, normalisation and batch samplers.
* :mod:`ala_gym.core.models`: child models built from a name, an input shape and an output size.
* :mod:`ala_gym.core.losses`: the Eq. 6 loss of ALA and its class-pair parameterisation.
* :mod:`ala_gym.core.metrics`: evaluators (a metric with its direction, named statistics) and Eq. 4.
* :mod:`ala_gym.core.metric_learning`: the adaptive embedding losses of Eqs. 9 and 10, pytorch-metric-learning's
  fixed ones, and Recall@k retrieval evaluation.
* :mod:`ala_gym.core.functional`: a child model as parameter and buffer dicts, run through
  ``torch.func.functional_call``.
* :mod:`ala_gym.core.sgd`: one pure (and differentiable) momentum-SGD step, the only SGD update of
  the package.
* :mod:`ala_gym.core.trainer`: one child trained K iterations at a time under any loss.
* :mod:`ala_gym.core.batched`: N children of one architecture trained together (``torch.func.vmap``).
* :mod:`ala_gym.core.allocator`: keeps freed CPU memory in the process (steadier CPU timings under glibc).
* :mod:`ala_gym.core.files`: files written whole or not at all, with the permissions of any other file.
"""
