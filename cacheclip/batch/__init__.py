"""Stage 4, batch: a whole grid (datasets x models x methods x shots x seeds), extracted and
fitted resumably, with failures kept per dataset; and the demo.

Owns: ``config`` (``BatchConfig`` from TOML and options), ``runner`` (plan and run a batch)
and ``demo``. May import every stage below it; never the CLI.
"""

from cacheclip.batch.config import BatchConfig, ModelSpec, load_config
from cacheclip.batch.runner import BatchLog, BatchSummary, Outcome, PlanItem, open_log, plan_batch, run_batch

__all__ = [
    "BatchConfig",
    "ModelSpec",
    "load_config",
    "BatchLog",
    "BatchSummary",
    "Outcome",
    "PlanItem",
    "open_log",
    "plan_batch",
    "run_batch",
]
