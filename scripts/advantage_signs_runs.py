"""How often a benchmark's records give advantages the other sign from their rewards' deviations
(:mod:`rftfm.fm.advantage_signs`), by kind of run and fault type, before a fault's onset and while it acts: the check
behind its module docstring and docs/diagnosis.md, "Advantage signs".

    python scripts/advantage_signs_runs.py --data /work/data/h31
"""

from __future__ import annotations

import numpy as np
import polars as pl
from benchmark_runs import load_runs, onsets

from rftfm.fm import advantage_signs


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    onset = dict(zip(ids, onsets(runs, kinds).tolist()))
    kind = dict(zip(ids, kinds))
    frame = (
        features.filter(pl.col("run_id").is_in(ids) & pl.col(advantage_signs.SIGNAL).is_not_null())
        .select("run_id", "step", advantage_signs.SIGNAL)
        .with_columns(
            pl.col("run_id").replace_strict(kind).alias("kind"),
            (pl.col("step") >= pl.col("run_id").replace_strict(onset)).alias("acting"),
        )
    )
    table = (
        frame.with_columns(
            pl.when(pl.col("acting")).then(pl.col("kind")).otherwise(pl.lit("before any fault")).alias("records of")
        )
        .group_by("records of")
        .agg(
            pl.col("run_id").n_unique().alias("runs"),
            pl.len().alias("records judged"),
            (pl.col(advantage_signs.SIGNAL) > advantage_signs.LIMIT).mean().mul(100).round(1).alias("flipping %"),
            pl.col(advantage_signs.SIGNAL).min().alias("least share"),
            pl.col(advantage_signs.SIGNAL).median().alias("median share"),
            pl.col(advantage_signs.SIGNAL).max().alias("largest share"),
        )
        .sort("records of")
    )
    print(f"records whose groups were judged, a share above {advantage_signs.LIMIT:g} flipping "
          "(a fault's records from its onset on):")
    with pl.Config(tbl_rows=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        print(table)
    healthy = table.filter(pl.col("records of") == "before any fault")
    if healthy.height:
        print(f"largest share at a healthy record: {float(healthy['largest share'][0]):.3g}")
    print(f"runs never judged: {len(set(ids) - set(frame['run_id'].unique().to_list()))} of {len(ids)}"
          f" ({int(np.sum([k.startswith('fault') for k in kinds]))} faulty in all)")


if __name__ == "__main__":
    main()
