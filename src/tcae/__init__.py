"""tcae: TC-AE deep-compression image tokenizers for latent diffusion."""

from tcae.models import TCAE, TCAEConfig, TCAEOutput, create_model, flops, list_models

__version__ = "0.1.0"
__all__ = ["TCAE", "TCAEConfig", "TCAEOutput", "create_model", "flops", "list_models", "__version__"]
