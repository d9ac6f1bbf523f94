"""Dynamics models learned from real transitions: data, models, training, k-step evaluation,
and the env that steps a learned model. A simulator is taken as an argument (an env, or
`load_model`'s `make_sim`): this package never imports the testbeds of `sim2real/`."""

from dynamics_models.checkpoint import load_model, save_model
from dynamics_models.collection import collect_transitions, random_actions
from dynamics_models.data import ObsLayout, TransitionDataset, load_dataset
from dynamics_models.evaluation import KStepError, k_step_error
from dynamics_models.factory import MODEL_KINDS, ModelConfig, make_model
from dynamics_models.learned_env import LearnedEnv
from dynamics_models.models import (
    EnsembleDynamics,
    MLPDynamics,
    ResidualDynamics,
    cast_model,
)
from dynamics_models.training import TrainingConfig, train

__all__ = [
    "EnsembleDynamics",
    "KStepError",
    "LearnedEnv",
    "MODEL_KINDS",
    "ModelConfig",
    "MLPDynamics",
    "ObsLayout",
    "ResidualDynamics",
    "TrainingConfig",
    "TransitionDataset",
    "cast_model",
    "collect_transitions",
    "k_step_error",
    "load_dataset",
    "load_model",
    "make_model",
    "random_actions",
    "save_model",
    "train",
]
