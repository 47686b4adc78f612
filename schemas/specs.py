"""What a training run is: model, strategy, local training and round settings.

The coordinator writes a `RunSpec`; the service stores it; every silo receives it with each
task and checks it against its own policy before doing any work.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.contracts.loader import Contract
from schemas.distill import DistillSpec
from schemas.ensemble import EnsembleSpec
from schemas.exceptions import SpecError
from schemas.tree_params import TreeSpec

ModelKind = Literal["logreg", "mlp"]
TaskKind = Literal["binary", "multiclass", "regression"]
StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold"]


# what a round's deadline may be (RoundOpen refuses more too)
MAX_ROUND_DEADLINE_S = 30 * 24 * 3600.0


class _Strict(BaseModel):
    # inf and nan are no rate, weight or deadline, and JSON (the wire, Prefect) cannot carry them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(_Strict):
    """A tabular PyTorch model: logistic / softmax / linear regression or a ReLU MLP.

    `task` and `n_outputs` follow the run's data contract (`model_spec_for_contract`): one
    logit (binary), one logit per class (multiclass), one number (regression). A regression
    model learns the target mapped into [0, 1] by `target_range` (the contract's range of the
    target column), so the default learning rates suit every target's units; predictions are
    mapped back before scoring. Without a range the target is learned as is.
    """

    kind: ModelKind
    n_features: int = Field(gt=0)
    hidden: tuple[int, ...] = ()
    task: TaskKind = "binary"
    n_outputs: int = Field(default=1, ge=1, le=10_000)
    target_range: tuple[float, float] | None = None

    @field_validator("hidden")
    @classmethod
    def _positive_hidden(cls, hidden: tuple[int, ...]) -> tuple[int, ...]:
        if any(h <= 0 for h in hidden):
            raise ValueError(f"hidden layer sizes must be positive, got {list(hidden)}")
        return hidden

    @model_validator(mode="after")
    def _hidden_matches_kind(self) -> ModelSpec:
        if self.kind == "logreg" and self.hidden:
            raise ValueError("a logreg model has no hidden layers; use kind='mlp'")
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("an mlp model needs at least one hidden layer, e.g. hidden=[32]")
        return self

    @model_validator(mode="after")
    def _outputs_match_task(self) -> ModelSpec:
        if self.task == "multiclass" and self.n_outputs < 2:
            raise ValueError("a multiclass model needs n_outputs = the number of classes (>= 2)")
        if self.task != "multiclass" and self.n_outputs != 1:
            raise ValueError(f"a {self.task} model has one output, not {self.n_outputs}")
        if self.target_range is not None:
            if self.task != "regression":
                raise ValueError("target_range scales a regression target only")
            if not self.target_range[0] < self.target_range[1]:
                raise ValueError(f"target_range must be [min, max], got {self.target_range}")
        return self


def model_spec_for_contract(
    kind: ModelKind, n_features: int, contract: Contract, hidden: tuple[int, ...] = ()
) -> ModelSpec:
    """The PyTorch model spec for `contract`'s task: outputs, and the regression target range.

    `n_features` is the width of the contract's feature pipeline
    (`silos.features.FeaturePipeline.from_contract(contract).n_features`).
    """
    target_range = None
    if contract.task == "regression":
        target_range = contract.column(contract.target.column).range
    return ModelSpec(
        kind=kind,
        n_features=n_features,
        hidden=hidden,
        task=contract.task,
        n_outputs=contract.n_outputs,
        target_range=target_range,
    )


def param_shapes(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the model's parameters, in wire order.

    The names match the PyTorch module built by `silos.torch_model.build_model`, so a state
    dict and a wire payload line up without any renaming.
    """
    sizes = [spec.n_features, *spec.hidden, spec.n_outputs]
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes.append((f"layers.{i}.weight", (n_out, n_in)))
        shapes.append((f"layers.{i}.bias", (n_out,)))
    return shapes


CONTROL_PREFIX = "control."


def update_shapes(spec: RunSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a silo's PyTorch update, in wire order: the model delta
    (`param_shapes`), followed under `scaffold` by the control-variate delta (the same shapes,
    names prefixed ``control.``), so secure aggregation sums both in one vector."""
    shapes = param_shapes(spec.torch_model)
    if spec.strategy.name != "scaffold":
        return shapes
    return shapes + [(CONTROL_PREFIX + name, shape) for name, shape in shapes]


class StrategySpec(_Strict):
    """How the service turns the silos' averaged update into the next global model.

    `fedavg` and `fedprox` apply the example-weighted mean delta with `server_lr`; `fedprox`
    also asks silos to add (mu/2)||w - w_global||^2 to their loss. `fedadam`, `fedyogi` and
    `fedadagrad` treat the negated mean delta as a pseudo-gradient for a server optimizer
    (Reddi et al. 2021, "Adaptive Federated Optimization"). `scaffold` (Karimireddy et al.
    2020) corrects each local step by the control variates (c - c_i) against client drift: a
    silo's update carries its control-variate delta after its model delta
    (`update_shapes`), and the service serves its control variate c with the global model.
    """

    name: StrategyName = "fedavg"
    server_lr: float = Field(default=1.0, gt=0)
    mu: float = Field(default=0.0, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-3, gt=0)

    @model_validator(mode="after")
    def _mu_only_for_fedprox(self) -> StrategySpec:
        if self.name == "fedprox" and self.mu <= 0:
            raise ValueError("fedprox needs mu > 0 (the proximal term's weight)")
        if self.name != "fedprox" and self.mu != 0:
            raise ValueError(f"mu is the fedprox proximal weight; strategy {self.name} ignores it")
        return self


class TrainingSpec(_Strict):
    """Local training every silo runs each round.

    `lr_schedule` ``cosine`` lowers the local learning rate over the run's rounds,
    lr * (1 + cos(pi (r - 1) / R)) / 2 in round r of R (the pooled baseline: per epoch block of
    the same budget). With heterogeneous silos each local epoch drifts toward the silo's own
    optimum, and FedAvg's constant-rate iterate settles off the pooled one by an amount that
    shrinks with the rate (`bench/README.md`, softmax logreg on the banks).
    """

    local_epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0

    def for_round(self, round_number: int, rounds: int) -> TrainingSpec:
        """The settings of training round `round_number` (1-based) of `rounds`: the seed plus
        the round, and the scheduled learning rate (rounds past the last keep its rate)."""
        lr = self.lr
        if self.lr_schedule == "cosine" and rounds > 1:
            step = min(max(round_number - 1, 0), rounds - 1)
            lr = self.lr * (1.0 + math.cos(math.pi * step / rounds)) / 2.0
        return self.model_copy(update={"seed": self.seed + round_number, "lr": lr})


class SecureAggregationSpec(_Strict):
    """Secure aggregation (Bonawitz et al. 2017) of the PyTorch strategies' updates.

    Each silo L2-clips its delta to `clip`, weights it by n_k / N (N: examples of the silos
    that advertised keys; uniform weights under DP), quantizes it into integers mod 2^bits and
    masks it; the service learns only the sum. `threshold` silos must survive to unmask
    (default: a majority of the round's silos, at least 2); `degree` switches to a sparse
    SecAgg+ neighbour graph for large federations. `consistency_check` runs Bonawitz's
    consistency round (survivors sign the survivor list before unmasking): None means the
    service's default, on in production mode, where a run cannot turn it off.
    """

    enabled: bool = True
    clip: float = Field(default=10.0, gt=0)
    bits: Literal[32, 64] = 32
    threshold: int | None = Field(default=None, ge=2)
    degree: int | None = Field(default=None, ge=2)
    consistency_check: bool | None = None

    @field_validator("degree")
    @classmethod
    def _even_degree(cls, degree: int | None) -> int | None:
        if degree is not None and degree % 2:
            raise ValueError(
                f"a SecAgg+ neighbour graph's degree must be even, got {degree}: each silo "
                "masks with degree/2 neighbours on either side of it on a ring"
            )
        return degree


class PrivacySpec(_Strict):
    """Silo-level differential privacy: each silo clips its delta to `clip_norm` (L2) and adds
    Gaussian noise of std noise_multiplier * clip_norm / sqrt(t), t being the round's
    secure-aggregation threshold (the fewest updates the service unmasks), so any sum the
    service releases carries at least noise_multiplier * clip_norm, dropouts or not; epsilon is
    accounted at `delta` after every round."""

    noise_multiplier: float = Field(gt=0)
    clip_norm: float = Field(gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)

    def quantizer_clip(self, threshold: int) -> float:
        """The range [-c, c] secure aggregation quantizes each coordinate into under DP.

        A coordinate is w * (u + e): a weight w <= 1, the clipped delta's |u| <= clip_norm and
        this silo's noise share e ~ N(0, s^2), s = noise_multiplier * clip_norm / sqrt(t).
        Clamping it at clip_norm alone (as before) truncated the noise: with 4 silos (w = 1/4,
        t = 3), 8 % of the coordinates at a noise multiplier of 4 and half of them at 10, so
        the released sum no longer carried the Gaussian noise the epsilon is counted for.
        c = clip_norm + 9 s leaves a coordinate clamped with probability 2 Phi(-9) < 3e-19:
        at 10^7 parameters and 10^4 rounds, under 1e-7 of touching a release at all, far below
        any delta a run asks for.
        """
        share = self.noise_multiplier * self.clip_norm / math.sqrt(max(threshold, 1))
        return self.clip_norm + NOISE_RANGE_STDS * share


NOISE_RANGE_STDS = 9  # PrivacySpec.quantizer_clip: how many of a noise share's stds fit


PersonalizeMethod = Literal["finetune", "fedper", "ditto"]


class PersonalizationSpec(_Strict):
    """Per-silo models made after the federated run; they never leave the silo.

    `finetune`: each silo fine-tunes the final global model on its training rows, keeping the
    epoch with the lowest loss on a `val_fraction` validation split (0 epochs is a candidate);
    tree runs continue boosting up to `max_trees` trees from the global model, stopped the same
    way. `fedper`: during the run each silo trains its own output layer (the head), which never
    leaves the silo (its delta is sent as zeros), and only the body is aggregated; at the end the
    global body plus the silo's head is fine-tuned as above. `ditto`: a per-silo model minimising
    the silo's loss + (ditto_lambda/2)||v - w_global||^2 from the final global model w_global.
    A silo keeps its starting model (the global one, or its FedPer head on the global body)
    unless the best epoch's validation gain holds on `min_confidence` of bootstrap resamples of
    the validation rows: on a few dozen rows the best epoch is often noise.
    Each silo signs the personalized model's sha256 and its held-out metrics into the ledger,
    next to the global model's and a local-only model's on the same rows.
    """

    method: PersonalizeMethod = "finetune"
    max_epochs: int = Field(default=30, ge=1, le=1000)
    max_trees: int = Field(default=20, ge=1, le=1000)
    val_fraction: float = Field(default=0.25, gt=0, lt=1)
    ditto_lambda: float = Field(default=0.1, gt=0)
    lr: float | None = Field(default=None, gt=0, description="None: the run's training lr")
    min_confidence: float = Field(
        default=0.95,
        ge=0,
        lt=1,
        description="keep the starting model unless the best epoch (or extra trees) beats it on "
        "this share of bootstrap resamples of the validation rows; 0: keep the best as it is",
    )


class AsyncSpec(_Strict):
    """Asynchronous (FedBuff-style buffered) training rounds, Nguyen et al. 2022.

    A training round is a buffer: the service aggregates it as soon as `buffer_size` usable
    updates are in, so a slow silo never holds the others up. A silo's update answers the
    round it was asked for, trained on that round's input model version (its base); one
    that arrives after that round closed goes into the buffer open now, with staleness
    t = (that buffer's input version) - (its base version), and is weighted by
    s(t) = 1/sqrt(1+t) (``sqrt``) or 1 (``constant``); beyond `max_staleness`, when one is
    set, it is dropped (recorded in the ledger's ``aggregate`` entry as such).

    No cap by default, as in FedBuff: a silo k times slower than the others sees about k
    buffers close while it trains, so any fixed cap drops every update of a slow enough silo,
    and the federation's model then leaves its rows out (with K = 3 of four hospitals and
    one 5x slower, the old default of 4 dropped all of its updates: `bench/async_rounds.py`).

    With secure aggregation, a silo that finished training announces it is ready; the first K
    ready silos form the buffer's cohort and run the secure-aggregation stages among
    themselves, each masking its update times s(t): the service sees only the weighted sum.
    K must then be at least the secure-aggregation threshold (and 2). When fewer than K silos
    are still active, the cohort forms once every active one is ready (if they reach the
    threshold). K above the run's participants is refused when the run is created.
    """

    buffer_size: int = Field(ge=1, description="K: aggregate as soon as K updates are in")
    max_staleness: int | None = Field(default=None, ge=0)
    staleness_weight: Literal["sqrt", "constant"] = "sqrt"


class RunSpec(_Strict):
    """A federated training run, as the coordinator asks for it.

    Exactly one of `model` (a PyTorch model trained by the strategies and, by default, securely
    aggregated) and `trees` (XGBoost / LightGBM, see `schemas.tree_params`) is set.
    """

    federation: str = Field(min_length=1, max_length=64)
    dataset: str = Field(min_length=1, max_length=64)
    contract_version: str | None = Field(
        default=None,
        max_length=64,
        description="the published version of contract `dataset` this run uses; None: the "
        "service pins the latest published version when the run is created",
    )
    model: ModelSpec | None = None
    trees: TreeSpec | None = None
    strategy: StrategySpec = StrategySpec()
    training: TrainingSpec = TrainingSpec()
    rounds: int = Field(default=10, ge=1, le=10_000)
    min_silos: int = Field(default=2, ge=1)
    round_deadline_s: float = Field(default=120.0, gt=0, le=MAX_ROUND_DEADLINE_S)
    patience: int = Field(
        default=0,
        ge=0,
        description="stop after this many rounds without "
        "improvement of the weighted validation loss; 0 never stops early",
    )
    silos: tuple[str, ...] = Field(
        default=(),
        description="participating silos; empty means every approved silo of the federation",
    )
    secure_aggregation: SecureAggregationSpec = SecureAggregationSpec()
    privacy: PrivacySpec | None = None
    federation_statistics: bool = Field(
        default=False,
        description="open with a statistics round: silos' per-feature counts, sums and sums of "
        "squares are securely summed into the federation's imputation/standardisation stats",
    )
    personalize: PersonalizationSpec | None = Field(
        default=None,
        description="per-silo personalized models made at the end; None: the global model only",
    )
    asynchronous: AsyncSpec | None = Field(
        default=None,
        description="buffered asynchronous training rounds (FedBuff); None: synchronous",
    )
    distill: DistillSpec | None = Field(
        default=None,
        description="federated distillation across model kinds (schemas.distill): silos "
        "exchange only securely aggregated soft labels; None: one global model",
    )
    ensemble: EnsembleSpec | None = Field(
        default=None,
        description="a FedBoost ensemble of per-silo models with federatedly learned mixture "
        "weights (schemas.ensemble); None: one global model",
    )
    mode: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="a round mode registered by a plugin (service setting `plugins`, a silo "
        "handler of the same name); None: the mode follows from model and trees",
    )

    @property
    def torch_model(self) -> ModelSpec:
        """The PyTorch model of this run; a tree run has none."""
        if self.model is None:
            raise SpecError("this run trains tree models; it has no PyTorch model spec")
        return self.model

    @property
    def model_label(self) -> str:
        """Short name of what the run trains, e.g. ``mlp`` or ``xgboost (bagging)``."""
        if self.trees is not None:
            return f"{self.trees.kind} ({self.trees.mode})"
        if self.distill is not None:  # each silo its own kind
            return "distill (" + ", ".join(sorted(set(self.distill.kinds.values()))) + ")"
        return self.torch_model.kind

    @model_validator(mode="after")
    def _one_model_family(self) -> RunSpec:
        if (self.model is None) == (self.trees is None):
            raise ValueError(
                "a run sets exactly one of model (PyTorch) and trees (XGBoost/LightGBM)"
            )
        if self.trees is not None:
            # Tree updates are not additive, so masking cannot hide them: they are sealed to the
            # service instead (schemas/sealed.py). Say so rather than silently dropping it.
            if self.secure_aggregation.enabled:
                raise ValueError(
                    "tree updates cannot be securely aggregated (they are not sums); set "
                    "secure_aggregation.enabled=false: tree updates are sealed to the service"
                )
            if self.privacy is not None:
                raise ValueError("differential privacy is not implemented for tree models")
            if self.strategy != StrategySpec():
                raise ValueError("strategies apply to PyTorch models; tree runs merge trees")
        return self

    @model_validator(mode="after")
    def _personalization_fits_model(self) -> RunSpec:
        p = self.personalize
        if p is None:
            return self
        if self.trees is not None and p.method != "finetune":
            raise ValueError(
                f"personalize.method {p.method!r} applies to PyTorch models; tree runs "
                "personalize by continued boosting (method 'finetune')"
            )
        if p.method == "fedper" and self.model is not None and not self.model.hidden:
            raise ValueError(
                "personalize.method 'fedper' keeps the output layer at each silo and shares the "
                "hidden layers; a logreg model has no hidden layer: use kind='mlp'"
            )
        return self

    @model_validator(mode="after")
    def _asynchronous_fits(self) -> RunSpec:
        a = self.asynchronous
        if a is None:
            return self
        if self.trees is not None or self.mode is not None:
            raise ValueError("asynchronous rounds buffer PyTorch updates; not tree or plugin runs")
        sa = self.secure_aggregation
        if sa.enabled:  # each buffer's cohort of K silos runs the protocol among themselves
            # a SecAgg+ graph of degree d needs more than d + 1 silos (schemas.secagg.config)
            floor = max(2, sa.threshold or 2, sa.degree + 2 if sa.degree else 2)
            if a.buffer_size < floor:
                raise ValueError(
                    f"asynchronous.buffer_size {a.buffer_size} is below what a secure buffer "
                    f"needs ({floor}: 2 silos at least, secure_aggregation.threshold "
                    f"{sa.threshold}, degree {sa.degree} + 2): the K silos of a buffer run "
                    "secure aggregation among themselves; raise buffer_size or lower the "
                    "threshold"
                )
            if self.privacy is not None:
                raise ValueError(
                    "asynchronous secure buffers weight each update by its staleness, which "
                    "would scale the silos' calibrated DP noise too: drop privacy or "
                    "asynchronous"
                )
        if a.buffer_size < self.min_silos:
            raise ValueError(
                f"asynchronous.buffer_size {a.buffer_size} is below min_silos {self.min_silos}: "
                "a buffer that closes early would fail its round"
            )
        return self

    @model_validator(mode="after")
    def _scaffold_fits(self) -> RunSpec:
        if self.strategy.name != "scaffold":
            return self
        # Each silo keeps a control variate per run and the service one per model version:
        # rounds that skip versions (buffers), noise on the control deltas (DP), a head kept
        # local (FedPer) or a non-SGD step (Adam) would break option II's estimate.
        refusals = {
            "a tree run": self.trees is not None or self.mode is not None,
            "differential privacy": self.privacy is not None,
            "asynchronous rounds": self.asynchronous is not None,
            "personalize.method 'fedper'": bool(
                self.personalize and self.personalize.method == "fedper"
            ),
            f"optimizer {self.training.optimizer!r}": self.training.optimizer != "sgd",
        }
        for what, refused in refusals.items():
            if refused:
                raise ValueError(
                    f"strategy scaffold is not supported with {what}: its control variates "
                    "assume synchronous plain-SGD rounds without DP noise"
                )
        return self

    @model_validator(mode="after")
    def _distill_fits(self) -> RunSpec:
        if self.distill is None:
            return self
        self._own_kinds_fit(
            "distill",
            dp="the soft labels carry no calibrated noise",
            own="each silo's distilled model is already its own",
            secagg="only securely aggregated soft labels may leave a silo",
            binary="soft labels are P(y=1)",
        )
        if not self.federation_statistics:
            raise ValueError(
                "distill draws its reference rows from the federation statistics: set "
                "federation_statistics=true"
            )
        return self

    @model_validator(mode="after")
    def _ensemble_fits(self) -> RunSpec:
        if self.ensemble is None:
            return self
        if self.distill is not None:
            raise ValueError("ensemble is not supported with distill")
        self._own_kinds_fit(
            "ensemble",
            dp="members are trained without noise",
            own="each silo's member is already its own",
            secagg="the weight gradients are only summed securely",
            binary="members predict P(y=1)",
        )
        if self.rounds < 2:
            raise ValueError(
                "an ensemble run needs rounds >= 2: round 1 trains the members, the others "
                "learn their weights"
            )
        return self

    def _own_kinds_fit(self, name: str, *, dp: str, own: str, secagg: str, binary: str) -> None:
        """Refuse what a run where each silo trains its own kind of model (`name`: distill,
        ensemble) cannot do: there is no global model, no strategy, no deltas. The keywords say
        why for that run (differential privacy, personalize, secure aggregation, binary)."""
        refusals = {
            "a tree run (set model: it gives the mlp members' hidden layers)": self.trees
            is not None,
            "a plugin mode": self.mode is not None,
            f"differential privacy ({dp})": self.privacy is not None,
            "asynchronous rounds": self.asynchronous is not None,
            f"personalize ({own})": self.personalize is not None,
            f"strategy {self.strategy.name!r} (there is no global model to step)": self.strategy
            != StrategySpec(),
            f"secure_aggregation disabled ({secagg})": not self.secure_aggregation.enabled,
        }
        for what, refused in refusals.items():
            if refused:
                raise ValueError(f"{name} is not supported with {what}")
        if self.model is not None and self.model.task != "binary":
            raise ValueError(
                f"{name} supports binary tasks only ({binary}); the run's contract is "
                f"{self.model.task}"
            )

    @model_validator(mode="after")
    def _privacy_needs_secure_aggregation(self) -> RunSpec:
        if self.privacy and not self.secure_aggregation.enabled:
            raise ValueError(
                "silo-level DP noise is calibrated for the securely aggregated sum; "
                "enable secure_aggregation or drop privacy"
            )
        return self
