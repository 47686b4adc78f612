"""One local binary model of any kind a silo can train alone: fit, predict, serialize.

FedBoost ensembles (one member per silo) and FedDistill (models of different kinds learning
from each other's soft labels) both need "a model of kind K trained on these rows" without the
federated machinery around it; this module is that, with a small stable API:

    model = train_local("xgboost", X, y, seed=0)          # or soft=targets in [0, 1]
    p = model.predict_proba(X)                             # P(y = 1), shape (n,)
    data = model.to_bytes(); model.sha256                  # self-describing bytes
    same = load_local("xgboost", data)

Kinds: "logreg" and "mlp" (PyTorch, `silos.torch_model.TabularNet`), "xgboost" and "lightgbm"
(native boosters). Soft targets train on cross-entropy against probabilities: BCE-with-logits
(PyTorch), binary:logistic (XGBoost accepts labels in [0, 1]) and LightGBM's `cross_entropy`
objective (its `binary` objective would round them). Binary tasks only.

The bytes are a one-line JSON header (format, kind, n_features, hidden sizes, library version)
then the native payload: float32 parameters in `param_shapes` order (PyTorch), XGBoost's JSON
model or LightGBM's model text; `load_local` refuses bytes of another kind or format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from schemas.ensemble import LOCAL_FORMAT
from schemas.specs import ModelSpec, param_shapes
from silos.exceptions import ModelError
from silos.optim import Adam
from silos.rows import checked_rows
from silos.torch_model import build_model, get_params, set_params

LocalKind = Literal["logreg", "mlp", "xgboost", "lightgbm"]
LOCAL_KINDS: tuple[str, ...] = get_args(LocalKind)
_FORMAT = LOCAL_FORMAT


@dataclass(frozen=True)
class LocalParams:
    """Hyperparameters of a local model; the defaults suit a few hundred tabular rows."""

    hidden: tuple[int, ...] = (32,)  # mlp only
    epochs: int = 40
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 1e-4
    n_trees: int = 40
    max_depth: int = 3
    eta: float = 0.1


@dataclass(frozen=True)
class LocalModel:
    """A trained local model: `native` is a list of float32 arrays (logreg, mlp) or a booster."""

    kind: str
    n_features: int
    native: Any
    hidden: tuple[int, ...] = ()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(y = 1) for each row of `X` (n, n_features), float64 of shape (n,)."""
        X, _ = checked_rows(X, np.zeros(len(X)), self.n_features)
        if self.kind in ("logreg", "mlp"):
            model = build_model(self._torch_spec())
            set_params(model, self.native)
            with torch.no_grad():
                out = torch.sigmoid(model(torch.from_numpy(X)))
            return out.numpy().astype(np.float64)
        if self.kind == "xgboost":
            import xgboost as xgb

            return np.asarray(self.native.predict(xgb.DMatrix(X)), dtype=np.float64)
        return np.asarray(self.native.predict(X), dtype=np.float64)

    def to_bytes(self) -> bytes:
        """Self-describing bytes (`load_local` reads them back)."""
        header = {"format": _FORMAT, "kind": self.kind, "n_features": self.n_features}
        if self.kind in ("logreg", "mlp"):
            header["hidden"] = list(self.hidden)
            payload = b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in self.native)
        elif self.kind == "xgboost":
            payload = bytes(self.native.save_raw("json"))
        else:
            payload = self.native.model_to_string().encode()
        return json.dumps(header, sort_keys=True).encode() + b"\n" + payload

    @property
    def sha256(self) -> str:
        """sha256 (hex) of `to_bytes()`: the hash the ledger and an ensemble record."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def _torch_spec(self) -> ModelSpec:
        return ModelSpec(kind=self.kind, n_features=self.n_features, hidden=self.hidden)  # type: ignore[arg-type]


def train_local(
    kind: str,
    X: np.ndarray,
    y: np.ndarray | None,
    *,
    soft: np.ndarray | None = None,
    seed: int = 0,
    params: LocalParams | None = None,
    weight: np.ndarray | None = None,
) -> LocalModel:
    """Train one binary model of `kind` on local rows.

    Parameters
    ----------
    kind
        "logreg", "mlp", "xgboost" or "lightgbm".
    X
        Encoded features, shape (n, n_features), finite.
    y
        0/1 labels of shape (n,); may be None when `soft` is given.
    soft
        Targets in [0, 1] of shape (n,) used instead of `y` (for instance the silo's own 0/1
        labels followed by aggregated soft labels of reference rows).
    seed
        The same seed, rows and targets give the same model.
    params
        Hyperparameters (`LocalParams()` by default).
    weight
        Optional non-negative weight of each row's loss, shape (n,) (FedDistill weights the
        reference rows against the silo's own); None: every row weighs 1.

    Raises
    ------
    ModelError
        Unknown kind, rows of the wrong shape, non-finite features, labels not 0/1 or soft
        targets outside [0, 1], or weights of the wrong shape or negative.
    """
    params = params or LocalParams()
    X, target = _rows(kind, X, y, soft)
    w = _weights(weight, len(target))
    if kind in ("logreg", "mlp"):
        hidden = params.hidden if kind == "mlp" else ()
        fitted = _fit_torch(kind, hidden, X, target, seed, params, w)
        return LocalModel(kind, X.shape[1], fitted, hidden)
    fit = _fit_xgboost if kind == "xgboost" else _fit_lightgbm
    return LocalModel(kind, X.shape[1], fit(X, target, seed, params, soft is not None, w))


def _weights(weight: np.ndarray | None, n: int) -> np.ndarray | None:
    """Row weights scaled to mean 1 (so a batch's loss keeps its size); None stays None."""
    if weight is None:
        return None
    w = np.asarray(weight, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ModelError(f"row weights must be {n} finite non-negative numbers, not all 0")
    return (w * (n / w.sum())).astype(np.float32)


def load_local(kind: str, data: bytes) -> LocalModel:
    """The model `LocalModel.to_bytes()` wrote; `kind` is what the caller expects it to be.

    Raises
    ------
    ModelError
        The bytes are not a local model, are of another kind, or the library cannot load them.
    """
    head, sep, payload = data.partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ModelError(f"these {len(data)} bytes are not a {_FORMAT} model (bad header)")
    if header.get("kind") != kind:
        raise ModelError(f"expected a {kind} model, the bytes hold a {header.get('kind')!r} model")
    n_features = int(header["n_features"])
    if kind in ("logreg", "mlp"):
        hidden = tuple(int(h) for h in header.get("hidden", ()))
        spec = ModelSpec(kind=kind, n_features=n_features, hidden=hidden)  # type: ignore[arg-type]
        return LocalModel(kind, n_features, _split_params(spec, payload), hidden)
    return LocalModel(kind, n_features, _load_booster(kind, payload))


def _rows(
    kind: str, X: np.ndarray, y: np.ndarray | None, soft: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if kind not in LOCAL_KINDS:
        raise ModelError(f"unknown local model kind {kind!r}; choose one of {list(LOCAL_KINDS)}")
    X = np.asarray(X, dtype=np.float32)
    if soft is None:
        if y is None:
            raise ModelError("train_local needs labels y or soft targets")
        X, target = checked_rows(X, y, X.shape[1] if X.ndim == 2 else -1)
    else:
        X, target = checked_rows(X, soft, X.shape[1] if X.ndim == 2 else -1, binary=False)
        if ((target < 0) | (target > 1)).any():
            raise ModelError("soft targets must lie in [0, 1] (probabilities of y = 1)")
    if not np.isfinite(X).all():
        raise ModelError("features contain NaN or infinity; encode rows with the FeaturePipeline")
    return X, target


def _fit_torch(
    kind: str,
    hidden: tuple[int, ...],
    X: np.ndarray,
    target: np.ndarray,
    seed: int,
    p: LocalParams,
    weight: np.ndarray | None = None,
) -> list[np.ndarray]:
    spec = ModelSpec(kind=kind, n_features=X.shape[1], hidden=hidden)  # type: ignore[arg-type]
    model = build_model(spec, seed=seed)
    optimizer = Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    features, labels = torch.from_numpy(X), torch.from_numpy(target.astype(np.float32))
    rows = torch.ones(len(labels)) if weight is None else torch.from_numpy(weight)
    generator = torch.Generator().manual_seed(seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches run slower on more threads; silos share machines
    try:
        for _ in range(p.epochs):
            for idx in torch.randperm(len(labels), generator=generator).split(p.batch_size):
                optimizer.zero_grad()
                (loss_fn(model(features[idx]), labels[idx]) * rows[idx]).mean().backward()
                optimizer.step()
    finally:
        torch.set_num_threads(previous)
    return get_params(model)


def _fit_xgboost(
    X: np.ndarray,
    target: np.ndarray,
    seed: int,
    p: LocalParams,
    soft: bool,
    weight: np.ndarray | None = None,
) -> Any:
    import xgboost as xgb

    params = {
        "objective": "binary:logistic",  # accepts labels in [0, 1]
        "max_depth": p.max_depth,
        "eta": p.eta,
        "seed": seed,
        "nthread": 1,
        "verbosity": 0,
    }
    return xgb.train(
        params, xgb.DMatrix(X, label=target, weight=weight, nthread=1), num_boost_round=p.n_trees
    )


def _fit_lightgbm(
    X: np.ndarray,
    target: np.ndarray,
    seed: int,
    p: LocalParams,
    soft: bool,
    weight: np.ndarray | None = None,
) -> Any:
    import lightgbm as lgb

    params = {
        "objective": "cross_entropy" if soft else "binary",
        "max_depth": p.max_depth,
        "num_leaves": 2**p.max_depth,
        "learning_rate": p.eta,
        "min_data_in_leaf": 5,
        "seed": seed,
        "deterministic": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    return lgb.train(params, lgb.Dataset(X, label=target, weight=weight), num_boost_round=p.n_trees)


def _split_params(spec: ModelSpec, payload: bytes) -> list[np.ndarray]:
    shapes = [shape for _, shape in param_shapes(spec)]
    sizes = [int(np.prod(shape)) for shape in shapes]
    if len(payload) != 4 * sum(sizes):
        raise ModelError(
            f"a {spec.kind} model of {spec.n_features} features and hidden {spec.hidden} has "
            f"{sum(sizes)} parameters; the bytes hold {len(payload) // 4}"
        )
    flat = np.frombuffer(payload, dtype=np.float32)
    bounds = np.cumsum([0, *sizes])
    return [
        flat[a : a + size].reshape(shape).copy()
        for a, size, shape in zip(bounds[:-1], sizes, shapes, strict=True)
    ]


def _load_booster(kind: str, payload: bytes) -> Any:
    if kind == "xgboost":
        import xgboost as xgb

        try:
            return xgb.Booster(model_file=bytearray(payload))
        except xgb.core.XGBoostError as exc:
            raise ModelError(f"the xgboost model in these bytes does not load: {exc}") from exc
    import lightgbm as lgb

    try:
        return lgb.Booster(model_str=payload.decode())
    except (lgb.basic.LightGBMError, UnicodeDecodeError) as exc:
        raise ModelError(f"the lightgbm model in these bytes does not load: {exc}") from exc
