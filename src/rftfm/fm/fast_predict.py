"""One LightGBM prediction for one row, through LightGBM's own single-row fast path.

``Booster.predict`` prepares the C call anew at every row (about 20 microseconds on this machine), which a live
monitor pays at every logged step; LightGBM's C API has a prepared single-row path for exactly this
(``LGBM_BoosterPredictForMatSingleRowFast``), which its Python package does not expose. This wraps it through the
package's own loaded library and error check; the result is the same number ``predict`` gives.
"""

from __future__ import annotations

import ctypes

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call

_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: the probability of a binary objective
_FLOAT64 = 1  # C_API_DTYPE_FLOAT64


class SingleRowPredictor:
    """``predictor(row)`` = ``booster.predict(row[None], num_threads=1)[0]`` for a row of the booster's width."""

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster  # kept alive as long as the prepared configuration that points into it
        self.width = booster.num_feature()
        self._config = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle, ctypes.c_int(_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(-1),
                ctypes.c_int(_FLOAT64), ctypes.c_int32(self.width), _c_str("num_threads=1"),
                ctypes.byref(self._config),
            )
        )
        # the row is copied into one buffer whose address is taken once (taking it costs more than the prediction)
        self._row = np.zeros(self.width)
        self._row_pointer = ctypes.c_void_p(self._row.ctypes.data)
        self._out = np.zeros(1)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64(0)
        self._out_len_pointer = ctypes.byref(self._out_len)

    def __call__(self, row: np.ndarray) -> float:
        if np.size(row) != self.width:
            raise ValueError(f"row of {np.size(row)} features for a model of {self.width}")
        self._row[:] = np.reshape(row, -1)
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                self._config, self._row_pointer, self._out_len_pointer, self._out_pointer
            )
        )
        return float(self._out[0])

    def __del__(self) -> None:
        config = getattr(self, "_config", None)
        if config is not None and config.value is not None and _LIB is not None:  # (None at interpreter exit)
            _LIB.LGBM_FastConfigFree(config)
