"""Ray job: a Ray Tune sweep of training runs, one MLflow parent run per sweep.

python -m pipelines.tune --config configs/tune/fusion_sweep_demo.yaml [--resume] [key=value ...]
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("tune", prog="python -m pipelines.tune"))
