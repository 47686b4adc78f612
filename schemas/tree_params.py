"""What a tree-model run is: library, federation mode, objective and validated hyperparameters.

Each library has its own strict schema (`XGBoostParams`, `LightGBMParams`): an unknown parameter
or an out-of-range value is refused with a message naming the parameter and what is allowed, so
a typo such as ``max_dept`` never silently falls back to a library default at eleven silos.

Modes
    ``bagging``     every silo boosts `trees_per_round` trees from the current global model; the
                    service merges all silos' new trees into one model (see
                    `aggregation/trees/README.md` for the scaling rule).
    ``cyclic``      silos train in turn within a round, each continuing from the model the
                    previous silo returned through the service.
    ``collective``  XGBoost's own federated collective (`xgboost.federated`, mutual TLS): one
                    model trained jointly; reveals per-silo gradient histograms to the server.
    ``secure-hist`` XGBoost only: the service grows the trees from gradient/hessian histograms
                    summed by secure aggregation (`aggregation/trees/secure_hist/`); it sees
                    federation-wide sums only, never one silo's histogram (`SecureHistSpec`).

Objective per task (`schemas.objectives`): binary:logistic, multi:softprob with ``num_class``
(K trees per boosting round, one per class), reg:squarederror. `check_task` refuses a spec whose
objective does not fit the contract's task.

`TreeSpec.native_params` maps a spec to the keyword dictionary the library expects; it imports
neither library, so both the silo (training) and the service (collective server) can use it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.exceptions import SpecError
from schemas.objectives import LGB_OBJECTIVE, TASK_BY_OBJECTIVE, TreeObjective, objective_for

TreeKind = Literal["xgboost", "lightgbm"]
TreeMode = Literal["bagging", "cyclic", "collective", "secure-hist"]

MAX_DEPTH_LIMIT = 16
MAX_TREES_PER_ROUND = 100
MAX_CLASSES = 1000


class TreeSpecError(SpecError):
    """A tree run's kind, mode, objective or hyperparameters are invalid."""


class _Params(BaseModel):
    """Strict base: unknown keys are refused with the allowed names listed."""

    # inf and nan are no rate or penalty, and JSON (the wire, Prefect) cannot carry them
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )
    LIBRARY: ClassVar[str] = "tree"

    @model_validator(mode="before")
    @classmethod
    def _no_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields) | {
                f.alias for f in cls.model_fields.values() if f.alias
            }
            unknown = sorted(str(k) for k in data if k not in allowed)
            if unknown:
                raise ValueError(
                    f"unknown {cls.LIBRARY} parameter(s) {unknown}; allowed: {sorted(allowed)}"
                )
        return data


class XGBoostParams(_Params):
    """XGBoost hyperparameters a federation may set (tree_method is always ``hist``)."""

    LIBRARY: ClassVar[str] = "XGBoost"

    max_depth: int = Field(default=4, ge=1, le=MAX_DEPTH_LIMIT)
    eta: float = Field(default=0.1, gt=0, le=1, description="learning rate")
    min_child_weight: float = Field(default=1.0, ge=0)
    reg_lambda: float = Field(default=1.0, ge=0, alias="lambda", description="L2 on leaf weights")
    reg_alpha: float = Field(default=0.0, ge=0, alias="alpha", description="L1 on leaf weights")
    gamma: float = Field(default=0.0, ge=0, description="minimum loss reduction to split")
    subsample: float = Field(default=1.0, gt=0, le=1)
    colsample_bytree: float = Field(default=1.0, gt=0, le=1)
    max_bin: int = Field(default=256, ge=2, le=1024)

    def native(self) -> dict[str, Any]:
        """Keyword arguments for `xgboost.train` (without objective, seed and threads)."""
        out = self.model_dump(by_alias=True)
        out["tree_method"] = "hist"
        return out

    def effective_max_depth(self) -> int:
        return self.max_depth


class LightGBMParams(_Params):
    """LightGBM hyperparameters a federation may set.

    ``max_depth = -1`` means unlimited depth; the depth is then bounded by ``num_leaves - 1``,
    which is what a silo policy's depth limit is compared against.
    """

    LIBRARY: ClassVar[str] = "LightGBM"

    num_leaves: int = Field(default=15, ge=2, le=4096)
    max_depth: int = Field(default=-1, ge=-1, le=MAX_DEPTH_LIMIT)
    learning_rate: float = Field(default=0.1, gt=0, le=1)
    min_data_in_leaf: int = Field(default=20, ge=1)
    min_sum_hessian_in_leaf: float = Field(default=1e-3, ge=0)
    lambda_l1: float = Field(default=0.0, ge=0)
    lambda_l2: float = Field(default=0.0, ge=0)
    min_gain_to_split: float = Field(default=0.0, ge=0)
    feature_fraction: float = Field(default=1.0, gt=0, le=1)
    bagging_fraction: float = Field(default=1.0, gt=0, le=1)
    bagging_freq: int = Field(default=0, ge=0)
    max_bin: int = Field(default=255, ge=2, le=1024)

    @model_validator(mode="after")
    def _depth_not_zero(self) -> LightGBMParams:
        if self.max_depth == 0:
            raise ValueError("max_depth must be -1 (unlimited) or 1..16, got 0")
        return self

    def native(self) -> dict[str, Any]:
        """Keyword arguments for `lightgbm.train` (without objective, seed and threads)."""
        out = self.model_dump()
        # Linear trees and categorical splits are outside what the merge and the reference
        # predictor support; say so explicitly rather than relying on library defaults.
        out.update({"linear_tree": False, "boosting": "gbdt", "verbosity": -1})
        return out

    def effective_max_depth(self) -> int:
        return self.max_depth if self.max_depth > 0 else self.num_leaves - 1


class SecureHistSpec(BaseModel):
    """Mode ``secure-hist`` beyond XGBoost's own parameters (see `HistRunConfig`).

    ``threshold`` is the secure-aggregation session's Shamir threshold t (default
    max(2, n // 2 + 1) of the silos that start the run): up to n - t silos may drop out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    fine_cells: int | None = Field(
        default=None,
        ge=2,
        le=2**20,
        description="cells of the fine binning grid per feature; None: chosen by the service "
        "from the contract's ranges and the federation statistics "
        "(schemas.secure_hist.protocol.auto_fine_cells)",
    )
    min_rows_per_node: int = Field(default=1, ge=1, description="federation-wide, per child")
    threshold: int | None = Field(default=None, ge=2)
    grad_bound: float = Field(default=1.0, gt=0, description="|gradient| and |label| bound")
    max_rows: int = Field(default=2**28, ge=1, description="bound on the federation's rows")
    grad_bits: int | None = Field(
        default=None,
        ge=1,
        le=40,
        description="fractional bits of the quantized gradients and hessians, rounded "
        "stochastically (fewer bytes a histogram, a model close to XGBoost's); None: the "
        "lossless precision max_rows allows (schemas.secure_hist.protocol)",
    )


class TreeSpec(BaseModel):
    """A tree-model run as the coordinator asks for it.

    `params` may be given as a plain dict; it is validated against the schema of `kind`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: TreeKind
    mode: TreeMode = "bagging"
    objective: TreeObjective = "binary:logistic"
    num_class: int = Field(
        default=0, ge=0, le=MAX_CLASSES, description="multi:softprob only: the classes K"
    )
    n_features: int = Field(gt=0)
    trees_per_round: int = Field(default=1, ge=1, le=MAX_TREES_PER_ROUND)
    params: XGBoostParams | LightGBMParams
    secure_hist: SecureHistSpec | None = Field(
        default=None, description="mode secure-hist only (filled with defaults there)"
    )

    @model_validator(mode="before")
    @classmethod
    def _params_for_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("kind")
        if data.get("mode") == "secure-hist" and data.get("secure_hist") is None:
            data = {**data, "secure_hist": {}}
        raw = data.get("params", {})
        schemas: dict[str, type[_Params]] = {"xgboost": XGBoostParams, "lightgbm": LightGBMParams}
        schema = schemas.get(str(kind))
        if schema is not None and isinstance(raw, dict):
            try:
                data = {**data, "params": schema.model_validate(raw)}
            except ValidationError as exc:
                # Re-raised as ValueError so the message names params.<field> and stays readable.
                raise ValueError(_describe(exc, prefix="params.")) from exc
        return data

    @property
    def task(self) -> str:
        return TASK_BY_OBJECTIVE[self.objective]

    @property
    def n_outputs(self) -> int:
        """Margins per row, and trees per boosting round: K for multi:softprob, else 1."""
        return self.num_class if self.objective == "multi:softprob" else 1

    @model_validator(mode="after")
    def _consistent(self) -> TreeSpec:
        if self.objective == "multi:softprob" and self.num_class < 2:
            raise ValueError("objective multi:softprob needs num_class >= 2 (the classes)")
        if self.objective != "multi:softprob" and self.num_class != 0:
            raise ValueError(f"num_class applies to multi:softprob, not to {self.objective}")
        expected = XGBoostParams if self.kind == "xgboost" else LightGBMParams
        if not isinstance(self.params, expected):
            raise ValueError(
                f"kind {self.kind!r} needs {expected.__name__}, got {type(self.params).__name__}"
            )
        if self.mode == "collective" and self.kind != "xgboost":
            raise ValueError(
                "mode 'collective' is XGBoost's own federated collective (xgboost.federated); "
                "LightGBM supports 'bagging' and 'cyclic'"
            )
        if self.mode == "secure-hist":
            p = self.params
            if not isinstance(p, XGBoostParams):
                raise ValueError("mode 'secure-hist' grows XGBoost trees, not LightGBM ones")
            if p.subsample != 1.0 or p.colsample_bytree != 1.0:
                raise ValueError(
                    "mode 'secure-hist' grows every tree on all rows and features: "
                    "params.subsample and params.colsample_bytree must be 1"
                )
            assert self.secure_hist is not None
            cells = self.secure_hist.fine_cells
            if cells is not None and cells < p.max_bin:
                raise ValueError(
                    f"secure_hist.fine_cells ({cells}) must be at least "
                    f"params.max_bin ({p.max_bin})"
                )
        elif self.secure_hist is not None:
            raise ValueError("secure_hist settings apply to mode 'secure-hist' only")
        return self

    def native_params(self, seed: int = 0, n_threads: int = 1) -> dict[str, Any]:
        """The full parameter dict for `xgboost.train` / `lightgbm.train`."""
        out = self.params.native()
        if self.objective == "multi:softprob":
            out["num_class"] = self.num_class
        if self.kind == "xgboost":
            out.update({"objective": self.objective, "seed": seed, "nthread": n_threads})
        else:
            out.update(
                {
                    "objective": LGB_OBJECTIVE[self.objective],
                    "seed": seed,
                    "deterministic": True,
                    "num_threads": n_threads,
                }
            )
        return out


def task_fields(task: str, n_classes: int) -> dict[str, Any]:
    """The spec fields a contract's task implies: objective, and num_class for multiclass.

    Coordinators merge these into a spec they build (``{**raw, **task_fields(...)}``).
    """
    objective = objective_for(task)
    return {"objective": objective, "num_class": n_classes if task == "multiclass" else 0}


def check_task(spec: TreeSpec, task: str, n_classes: int, dataset: str = "") -> None:
    """TreeSpecError unless the spec's objective (and class count) is the contract's task.

    `n_classes` is the contract's number of classes (multiclass; ignored otherwise).
    """
    where = f"contract {dataset!r}" if dataset else "the contract"
    if spec.task != task:
        raise TreeSpecError(
            f"the run's tree objective {spec.objective} is for {spec.task}, but {where} declares "
            f"task {task!r}: use objective {objective_for(task)}"
        )
    if task == "multiclass" and spec.num_class != n_classes:
        raise TreeSpecError(
            f"the run's trees have num_class {spec.num_class}; {where} lists {n_classes} classes"
        )


def parse_tree_spec(raw: dict[str, Any]) -> TreeSpec:
    """Validate a tree spec from JSON/TOML data, with one readable message per problem.

    Raises
    ------
    TreeSpecError
        Naming each invalid field (e.g. ``params.max_depth``), the value's problem, and for an
        unknown parameter the list of allowed ones.
    """
    try:
        return TreeSpec.model_validate(raw)
    except ValidationError as exc:
        raise TreeSpecError("invalid tree spec: " + _describe(exc)) from exc


def _describe(exc: ValidationError, prefix: str = "") -> str:
    problems = []
    for err in exc.errors():
        where = prefix + ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"] and not isinstance(err.get("input"), dict):
            message += f" (got {err.get('input')!r})"
        where = where.rstrip(".")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
