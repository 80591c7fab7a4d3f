"""In-tree runs load the plugin even where the package is not installed (pip install -e . does)."""

pytest_plugins = ["colo_fixtures.plugin"]
