"""fedsilo benchmark: the heart-disease task as a Flower app."""
