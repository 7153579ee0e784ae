"""Shared pytest configuration: the test bed's fixtures (control plane, MinIO) are a plugin."""

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

pytest_plugins = ["tests.bed.fixtures"] if importlib.util.find_spec("tests.bed.fixtures") else []
