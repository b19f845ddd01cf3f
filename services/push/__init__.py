"""tongda's push channel service: the shared channel engine with the push providers."""
