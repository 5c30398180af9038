"""nervectl: the operator client of nerved."""
