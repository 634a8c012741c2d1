"""Single-device nn.Modules (no Lightning imports)."""
