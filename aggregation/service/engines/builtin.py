"""The round modes fedsilo ships: one registration line each (plugins register their own)."""

from __future__ import annotations

from aggregation.service.engines.async_buffer import AsyncEngine
from aggregation.service.engines.async_secure import AsyncSecureEngine
from aggregation.service.engines.collective import CollectiveEngine
from aggregation.service.engines.distill import DistillEngine
from aggregation.service.engines.ensemble import EvaluateEngine, MembersEngine, WeightsEngine
from aggregation.service.engines.plain import PlainEngine
from aggregation.service.engines.registry import register
from aggregation.service.engines.secure import SecureEngine
from aggregation.service.engines.secure_hist import SecureHistEngine
from aggregation.service.engines.statistics import StatisticsEngine
from aggregation.service.engines.trees import TreeEngine
from schemas.ensemble import EVALUATE_MODE, MEMBERS_MODE


def register_builtins() -> None:
    """Register every built-in engine (idempotent: the service calls it at start-up)."""
    register("plain", PlainEngine())
    register("secure", SecureEngine())
    register("statistics", StatisticsEngine())
    register("bagging", TreeEngine("bagging"))
    register("cyclic", TreeEngine("cyclic"))
    register("collective", CollectiveEngine())
    register("secure-hist", SecureHistEngine())
    register("async", AsyncEngine())
    register("async-secure", AsyncSecureEngine())
    register("distill", DistillEngine())
    register(MEMBERS_MODE, MembersEngine())
    register("ensemble-weights", WeightsEngine())
    register(EVALUATE_MODE, EvaluateEngine())
