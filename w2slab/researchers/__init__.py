"""Automated researchers: LLM agents or offline policies, each run in a sandbox."""
