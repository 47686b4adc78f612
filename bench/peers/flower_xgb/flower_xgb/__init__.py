"""fedsilo benchmark: XGBoost bagging as a Flower app."""
