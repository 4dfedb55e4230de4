"""tcae: TC-AE deep-compression image tokenizers for latent diffusion.

The names below are imported on first use (PEP 562), so `import tcae` and the `tcae` command's
`--help` do not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "TCAE": "tcae.models",
    "TCAEConfig": "tcae.models",
    "TCAEOutput": "tcae.models",
    "create_model": "tcae.models",
    "flops": "tcae.models",
    "list_models": "tcae.models",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'tcae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
