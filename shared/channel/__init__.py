"""The engine every channel service shares: provider interface, consume loop, lifecycle."""
