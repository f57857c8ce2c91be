"""The grader: evaluation server (dev-half PGR), final submissions and leaderboard, forum,
code store, audit log and dashboard. See ``README.md`` here; start it with ``w2slab serve``."""
