"""Job: evaluate a checkpoint (clip and video accuracy) and log to its MLflow run.

python -m pipelines.evaluate --config configs/train/demo.yaml eval.checkpoint=PATH
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate", prog="python -m pipelines.evaluate"))
