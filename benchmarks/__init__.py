"""`nox -s bench`: speed, memory and accuracy figures, medians over several runs."""
