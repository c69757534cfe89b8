"""Training-data libraries the jobs build on: chat samples in the OpenAI format (``chat``: rendering
with a chat template, spans and per-token masks; ``chat_checks``: validation and drop reasons).
See docs/chat_data.md."""
