"""The sweep: Ray Tune + Optuna over TorchTrainer trials, logged to MLflow (python -m gmt_ray.sweep)."""
