"""optimlab's service: the FastAPI app, the database layer, the broker glue and the CLI. Imports no torch."""
