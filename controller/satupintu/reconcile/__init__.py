"""Pure diffs between desired plans and what a switch or port actually holds."""
