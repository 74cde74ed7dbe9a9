"""rococap worker service: Celery tasks that caption batches of images on one GPU each."""
