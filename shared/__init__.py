"""tongda's common package: contract models, configuration, Kafka and Redis wiring,
masking, logging and metrics shared by the router and the channel services."""
