"""The W2S engine: pipeline jobs, the content-addressed cache and PGR statistics."""
