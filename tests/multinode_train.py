"""Run by tests/test_train_multinode.py in its own process: a head and two worker
nodes on one machine (ray.cluster_utils.Cluster), and a 2-worker training whose
workers fit only one to a worker node. Prints the result as JSON."""

import json
import sys

import ray
from probe import Probe
from ray.cluster_utils import Cluster

from vidray.config import load_config
from vidray.runtime import quiet_ray_data
from vidray.train import tasks
from vidray.train.driver import run_training

data, work = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
# A train worker takes a whole 2-CPU node, so two cannot share one; Ray Data's
# readers run on the head's CPU.
for _ in range(2):
    cluster.add_node(num_cpus=2)
ray.init(address=cluster.address)
quiet_ray_data()
cfg = load_config(
    None,
    [
        "model.name=simple3d",
        "model.width=8",
        "clip.T=4",
        "clip.crop=48",
        "train.epochs=1",
        "train.batch_size=8",
        "train.workers=2",
        "train.cpus_per_worker=2",
        f"train.data={data}",
        f"train.storage_path={work}/runs",
        f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db",
    ],
)
tasks._TASKS["classify"] = Probe(dir=work)  # each rank's node and parameter hash
result = run_training(cfg)
head = ray.get_runtime_context().get_node_id()
print(json.dumps({"run_id": result.run_id, "head": head, "checkpoint": result.checkpoint}))
ray.shutdown()
cluster.shutdown()
