"""Model zoo and teacher training."""

from slimtune.models.teacher import TeacherConfig, load_or_train_teacher, train_teacher
from slimtune.models.zoo import MODELS, SmallCNN, build_model

__all__ = [
    "MODELS", "SmallCNN", "build_model", "TeacherConfig", "load_or_train_teacher", "train_teacher"
]
