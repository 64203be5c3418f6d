"""Generalist backends (vLLM's OpenAI API), GSCo prompts and answer parsing (not built yet)."""

__all__: list[str] = []
