"""The model zoo: `build(name, num_classes, **kwargs)` and `available()`.

Importing a family module registers it; nothing here imports Ray.
"""

from vidray.models import simple3d  # noqa: F401  (registers its family)
from vidray.models.registry import InputSpec, available, build, entry

__all__ = ["InputSpec", "available", "build", "entry"]
