"""Executors: what actually does a task (the Claude Code CLI, a shell command)."""
