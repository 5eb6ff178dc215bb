"""Stand-ins for real model servers: tests, benchmarks and `manage.py fake_model_server` use
them; the broker itself never imports this package."""
