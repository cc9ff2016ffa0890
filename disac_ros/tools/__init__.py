"""Command-line tools (console scripts): dataset writer, fleet runner, training, evaluation."""
