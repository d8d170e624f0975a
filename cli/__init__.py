"""The `gemmaforge` command line: thin typer wrappers over the library functions."""
