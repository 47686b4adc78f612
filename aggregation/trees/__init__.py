"""Tree models across silos: XGBoost and LightGBM bagging and cyclic, XGBoost's collective.

Service side: `validate` (checks a silo's update), `models` (merge, hand-off, evaluation),
`collective` (the XGBoost federated server). Silo side, importable by silo agents:
`collective_worker`. See README.md for the modes and what the service sees in each.
"""
