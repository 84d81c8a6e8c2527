"""``vosrt bench``: latency of each backend on a synthetic clip, per stage and end to end.

:mod:`.settings` (what to run; no torch import), :mod:`.clip` (the synthetic clip),
:mod:`.measure` (the timing), :mod:`.report` (table and plot).
"""
