"""Optimizers, weight-decay policies and learning-rate schedules."""
from normrepro.optim.build import build_optimizer
from normrepro.optim.param_groups import WD_POLICIES, param_groups
from normrepro.optim.schedules import SCHEDULES, build_scheduler, lr_factor

__all__ = ["WD_POLICIES", "SCHEDULES", "param_groups", "build_optimizer", "build_scheduler", "lr_factor"]
