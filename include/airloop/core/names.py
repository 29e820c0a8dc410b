"""Names shared by every floor: registry aliases and A/B variant names."""

from __future__ import annotations

CHAMPION = "champion"


CHALLENGER = "challenger"


#: Variant of the challenger's rows in shadow mode (table ``shadow_predictions``).
SHADOW = "shadow"


#: Variant of champion answers given to records routed to a challenger that failed on them.
FALLBACK = "fallback"


#: Aliases with a fixed meaning that environments may not take.
RESERVED_ALIASES = frozenset({"champion", "challenger"})


CHAMPION = "champion"


CHAMPION = "champion"


CHALLENGER = "challenger"
