"""Multi-stage pipelines built from the recipe, data and evaluation packages (the quickstart, plots)."""
