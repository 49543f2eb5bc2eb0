# The project's root conftest: imports nothing heavy (``pytest --help`` must not import torch).
pytest_plugins = ["pytester"]
