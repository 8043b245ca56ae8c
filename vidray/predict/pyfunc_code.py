"""The code MLflow runs to build a vidray classifier model when it loads one (MLflow's
"models from code"): copied into the model by `vidray.predict.pyfunc.log_classifier`,
so the model holds no pickled object, only this file and the checkpoint."""

from mlflow.models import set_model

from vidray.predict.pyfunc import VideoClassifierModel

set_model(VideoClassifierModel())
