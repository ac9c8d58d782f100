"""Few-shot methods trained on cached features; see ``base`` for the interface."""

from .base import FitContext, FitData, Method, RunPlan, Trained, get_method, list_methods, register_method

__all__ = ["FitContext", "FitData", "Method", "RunPlan", "Trained", "get_method", "list_methods", "register_method"]
