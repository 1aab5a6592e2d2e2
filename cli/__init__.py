"""The typer app: parses, calls the library, shows with rich. No logic of its own."""
