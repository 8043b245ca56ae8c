"""Spatio-temporal action detection (AVA-style): person boxes and action scores on
keyframes, frame-mAP, and the ``detect`` training task (registered on import)."""

from vidray.detect import task  # noqa: F401  (importing it registers train.task=detect)
