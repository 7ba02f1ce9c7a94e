"""Small worlds where a backbone is trained here and the reward is exact (see docs/shapesworld.md)."""
