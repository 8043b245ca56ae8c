"""Use a trained classifier on new videos (`classifier`); importing the package
registers its MLflow model with training (`pyfunc`), as the task packages register
themselves."""

from vidray.predict import pyfunc  # noqa: F401  (registers log_classifier for "classify")
