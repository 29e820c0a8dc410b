"""Names shared by every floor: registry aliases and A/B variant names.

The registry aliases ``champion`` (what serving answers with) and ``challenger`` (the newest
registered candidate) are also the names of the two variants of an A/B test.
"""

from __future__ import annotations

#: Alias of the version serving answers with (moved with the serving environment), and the A/B variant it plays.
CHAMPION = "champion"
#: Alias of the newest registered candidate, and the A/B variant it plays.
CHALLENGER = "challenger"
#: Variant of the challenger's rows in shadow mode (table ``shadow_predictions``).
SHADOW = "shadow"
#: Variant of champion answers given to records routed to a challenger that failed on them.
FALLBACK = "fallback"
#: Aliases with a fixed meaning that environments may not take.
RESERVED_ALIASES = frozenset({CHAMPION, CHALLENGER})

#: ``status`` of a ``predictions`` row: answered.
PREDICTION_OK = "ok"
#: ``status`` of the one row of a request the model failed on (a model error: counted in ``error_rate``).
MODEL_ERROR = "error"
#: ``status`` of the one row of a request that failed because of its own records (a client error:
#: never counted in ``error_rate``, its alert or the post-deploy guard).
CLIENT_ERROR = "client_error"
