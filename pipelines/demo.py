"""The end-to-end demo on a generated dataset: synth -> ingest -> train -> evaluate.

python -m pipelines.demo [section.key=value ...]      (what `make demo` runs)
"""

import sys

from vidray.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("demo", prog="python -m pipelines.demo"))
