"""tongda's sms channel service: the shared channel engine with the sms providers."""
