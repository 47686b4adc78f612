"""Vertical federation: PSI, Paillier-packed SecureBoost, the authenticated channel."""
