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
