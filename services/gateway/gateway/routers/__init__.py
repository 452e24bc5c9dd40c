"""HTTP routers: thin, one per area; they parse, call the service layer, and shape responses."""
