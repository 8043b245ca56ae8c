"""The model zoo: `build(name, num_classes, **kwargs)` and `available()`.

Importing a family module registers it; nothing here imports Ray.
"""

from vidray.models import (  # noqa: F401  (importing a family module registers it)
    c3d,
    frame_fusion,
    i3d,
    recurrent,
    resnet3d,
    simple3d,
    slow_fusion,
    slowfast,
    two_stream,
    video_transformers,
)
from vidray.models.registry import InputSpec, arguments, available, build, entry

__all__ = ["InputSpec", "arguments", "available", "build", "entry"]
