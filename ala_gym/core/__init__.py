"""The torch-only core: pieces of child training that know nothing of gymnasium, envs or agents.

``import ala_gym.core`` itself imports nothing: submodules are imported by name
(``from ala_gym.core.sgd import sgd_step``). The architecture test keeps this package free of
gymnasium, stable-baselines3, ``ala_gym.envs``, ``agents`` and ``benchmarks``.

* :mod:`ala_gym.core.functional`: a child model as parameter and buffer dicts, run through
  ``torch.func.functional_call``.
* :mod:`ala_gym.core.sgd`: one pure (and differentiable) momentum-SGD step.
"""
