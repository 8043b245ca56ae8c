"""Job: serve a classifier over HTTP with Ray Serve (POST /predict).

python -m pipelines.serve --checkpoint DIR | --model models:/NAME/1 [--port 8000] [key=value ...]
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("serve", prog="python -m pipelines.serve"))
