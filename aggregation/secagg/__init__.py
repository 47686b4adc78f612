"""Secure aggregation (Bonawitz et al. 2017, with SecAgg+ neighbour graphs as an option).

The service learns only the sum of the silos' quantized updates, also when silos drop out.
Silos import :mod:`silos.secagg.client` (plus ``quantize``, ``config`` and ``messages``);
the service imports :mod:`aggregation.secagg.server`. See README.md in this folder for the
protocol, its parameters and the threat model.
"""
