"""Builders of the bundled demo trials (one module per trial); see scripts/build_demo_data.py."""
