"""Discord cogs: one per feature (imagine, history, hypernets, owner tools)."""
