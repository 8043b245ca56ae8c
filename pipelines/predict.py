"""Job: a classifier on new videos: one in-process, a folder, CSV or URI prefix with Ray Data.

python -m pipelines.predict --checkpoint DIR --video PATH [--output DIR] [section.key=value ...]
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("predict", prog="python -m pipelines.predict"))
