"""One job, in a straight line: resolve the spec -> compress -> export and verify -> measure -> gate -> build the
report -> write. Depends only on ``pruning`` and ``exporters``; the service and the CLI call it."""
