"""Ray Tune sweeps over model families and clip parameters (`vidray tune`)."""
