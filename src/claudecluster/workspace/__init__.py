"""Task workspaces: git bundles in, git bundles out, no shared filesystem."""
