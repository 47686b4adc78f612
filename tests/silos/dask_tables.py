"""A card-transaction contract and generated tables for the Dask silo tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.contracts.loader import Contract, load_contract_text

CONTRACT_TEXT = """
name = "bank_tx"
version = "1.0.0"
description = "card transactions, fraud or not (the Dask silo tests' contract)"
min_rows = 100
min_class_rows = 5
features = ["amount", "hour", "channel", "age"]

[target]
column = "fraud"
values = [0, 1]
positive_if = { op = ">", value = 0 }

[[columns]]
name = "tx_id"
type = "numeric"
range = [0, 1000000000000]
unique = true

[[columns]]
name = "amount"
type = "numeric"
range = [0, 10000]
max_missing_fraction = 0.1
impute = 0.0

[[columns]]
name = "hour"
type = "numeric"
range = [0, 23]

[[columns]]
name = "channel"
type = "categorical"
categories = ["web", "pos", "atm"]

[[columns]]
name = "age"
type = "numeric"
range = [18, 100]
reference = { mean = 45.0, std = 15.0 }

[[columns]]
name = "fraud"
type = "numeric"
range = [0, 1]
"""


def bank_contract() -> Contract:
    return load_contract_text(CONTRACT_TEXT, "bank_tx (tests/silos/dask_tables.py)")


def transactions(n: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    """`n` valid transactions; fraud depends on amount, hour and channel (learnable)."""
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 150.0, n).clip(0, 10000)
    amount[rng.random(n) < 0.02] = np.nan
    hour = rng.integers(0, 24, n).astype(np.float64)
    channel = rng.choice(np.array(["web", "pos", "atm"], dtype=object), n)
    age = rng.normal(45.0, 15.0, n).clip(18, 100).round()
    logit = -3.0 + np.nan_to_num(amount) / 300.0 + (hour < 5) * 1.5 + (channel == "web") * 0.8
    fraud = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return pd.DataFrame(
        {
            "tx_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "amount": amount,
            "hour": hour,
            "channel": channel,
            "age": age,
            "fraud": fraud,
        }
    )


def write_parquet(path: Path, n_rows: int, rows_per_group: int, seed: int = 7) -> int:
    """A Parquet table written group by group (never whole in memory): the same generated
    rows in every group but their ids (fresh ones: unique overall), so that a big table is
    quick to write. Returns its size in memory as pandas holds it, summed over the groups."""
    sample = transactions(rows_per_group, seed)
    group_bytes = int(sample.memory_usage(deep=True).sum())
    table = pa.Table.from_pandas(sample, preserve_index=False)
    column = table.schema.get_field_index("tx_id")
    in_memory = 0
    with pq.ParquetWriter(path, table.schema) as writer:
        for start in range(0, n_rows, rows_per_group):
            n = min(rows_per_group, n_rows - start)
            ids = pa.array(np.arange(start, start + n, dtype=np.int64))
            group = table.slice(0, n).set_column(column, "tx_id", ids)
            writer.write_table(group, row_group_size=rows_per_group)
            in_memory += group_bytes * n // rows_per_group
    return in_memory
