"""Face identity: embeddings that say whether two faces are the same person (issue 14)."""
