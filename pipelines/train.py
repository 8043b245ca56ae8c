"""Ray job: train a model on ingested windows with Ray Train, logged to MLflow.

python -m pipelines.train --config configs/train/demo.yaml [section.key=value ...]
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", prog="python -m pipelines.train"))
