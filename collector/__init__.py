"""rococap collector service: gathers results from Redis into the checkpointed CSV."""
