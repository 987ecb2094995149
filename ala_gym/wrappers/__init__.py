"""Adapters from the ALA envs to RL libraries and to Ray (each behind its extra: ``pip install ala-gym[sb3]``,
``ala-gym[ray]``)."""
