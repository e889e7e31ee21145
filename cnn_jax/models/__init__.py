"""Model zoo: every network of the lecture, built by name (see registry.py)."""

from cnn_jax.models.registry import (MODELS, ModelSpec, build, default_input_shape,
                                     default_num_classes, describe, field_defaults, import_module,
                                     list_models, model_fields, register)

__all__ = ["MODELS", "ModelSpec", "build", "default_input_shape", "default_num_classes",
           "describe", "field_defaults", "import_module", "list_models", "model_fields",
           "register"]
