"""modelspec's runtime: executes compiled plans (see the runtime issue)."""
