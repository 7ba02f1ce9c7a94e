"""``python -m promptloop.server --policy PATH ...``: the same as ``promptloop serve``."""

if __name__ == "__main__":  # vLLM starts worker processes that re-import the main module
    import typer

    from promptloop.server.cli import serve

    typer.run(serve)
