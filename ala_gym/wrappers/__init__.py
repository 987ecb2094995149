"""Adapters from the ALA envs to RL libraries (each behind its extra: ``pip install ala-gym[sb3]``)."""
