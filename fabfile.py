"""Fabric 3 loads only a collection named ``fabfile``; the tasks live in tasks.py."""

from tasks import *  # noqa: F401,F403
