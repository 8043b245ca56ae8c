"""vidray: a distributed data-and-training workflow on Ray for video understanding."""

from vidray.errors import VidrayError

__all__ = ["VidrayError", "__version__"]
__version__ = "0.1.0"
