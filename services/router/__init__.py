"""The router: plans each notification, applies contact policy, dispatches and falls back."""
