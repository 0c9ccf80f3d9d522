"""Packaged TOML presets (`--preset NAME`)."""
