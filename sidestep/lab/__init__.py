"""The gradient lab: estimators of the gradient through a top-k selection, and tasks that measure them.

Pure torch: no prefect, no ray, no storage. ``estimators`` holds every estimator once behind one
interface; ``planted`` is the synthetic task whose exact gradient comes from enumeration.
"""

from sidestep.lab.estimators import ESTIMATORS, Estimator, grad, surrogate
from sidestep.lab.judge import CascadeJudge
from sidestep.lab.planted import PlantedConfig, run_planted

__all__ = ["ESTIMATORS", "CascadeJudge", "Estimator", "PlantedConfig", "grad", "run_planted", "surrogate"]
