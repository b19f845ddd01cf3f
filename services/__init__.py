"""tongda's services: the router and the four channel services."""
