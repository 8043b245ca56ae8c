"""``vidray serve``: a classification checkpoint behind HTTP with Ray Serve.

`app` wires the application (ingress, decode tasks, batched model replicas) and runs
it; `request` reads what a client sent, `decoding` turns the video into window rows.
"""
