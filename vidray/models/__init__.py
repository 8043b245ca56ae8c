"""The model zoo: `build(name, num_classes, **kwargs)` and `available()`.

Importing a family module registers it; nothing here imports Ray.
"""

# Importing a family module registers it.
from vidray.models import c3d, i3d, resnet3d, simple3d, slow_fusion, slowfast  # noqa: F401
from vidray.models.registry import InputSpec, available, build, entry

__all__ = ["InputSpec", "available", "build", "entry"]
