"""rococap producer service: enqueues the image ids of a split as Celery tasks."""
