"""Small shared utilities (typed configs)."""
