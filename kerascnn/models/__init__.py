"""Model builders, gathered in one registry (`build_model`, `list_models`)."""

from kerascnn.models.registry import build_model, list_models, register_model

# Importing the builder modules registers them.
from kerascnn.models import autoencoder, dcgan, resnet, sequential, subclassed, transfer  # noqa: F401,E402

__all__ = ["build_model", "list_models", "register_model"]
