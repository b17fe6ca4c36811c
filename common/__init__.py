"""Contracts shared by serving, trainer-orchestration and worker: settings, Redis keys,
event models and the model registry. Depends on nothing else in this repo."""
