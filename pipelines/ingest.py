"""Ray job: videos -> Parquet windows (decode, optical flow, shards, manifest).

python -m pipelines.ingest --config configs/ingest/demo.yaml [section.key=value ...]
ray job submit --working-dir . -- python -m pipelines.ingest --config configs/ingest/ucf101.yaml
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("ingest", prog="python -m pipelines.ingest"))
