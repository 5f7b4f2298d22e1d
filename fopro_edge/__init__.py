"""fopro-edge: FoPro-KD distillation of long-tailed image classifiers, export with a rare-class
accuracy gate, and honest latency benchmarks.

Library entry points (one per step, each returns a typed result):
``fopro_edge.config.load_recipe``, ``fopro_edge.distill.trainer.distill``,
``fopro_edge.deploy.pipeline.export``, ``fopro_edge.bench.bench``, ``fopro_edge.workflow.run_recipe``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fopro-edge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
