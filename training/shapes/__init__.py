"""Training scripts for the ShapesWorld backbones and policy start (see docs/shapesworld.md)."""
