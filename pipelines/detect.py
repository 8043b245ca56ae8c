"""Job: AVA-style action detection on a video, or a folder of videos with Ray Data.

python -m pipelines.detect --video PATH --checkpoint DIR --detector FILE [section.key=value ...]
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("detect", prog="python -m pipelines.detect"))
