"""WeightFormer: a Transformer that reads N teacher networks' weights layer by layer and writes a student's."""
