"""Spatio-temporal action detection (AVA-style): the AVA files, frame-mAP, and later
the detection ingest, heads and training that build on them."""
