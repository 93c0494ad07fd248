"""HTTP serving of a trained captioner (`aac-serve`): batcher, model wrapper, server."""
