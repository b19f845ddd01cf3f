"""tongda's voice channel service: the shared channel engine with the voice providers."""
