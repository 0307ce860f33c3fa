"""Model organisms: small models the kit trains itself (the zoo, and a planted ground truth)."""
