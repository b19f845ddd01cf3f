"""tongda's email channel service: the shared channel engine with the email providers."""
