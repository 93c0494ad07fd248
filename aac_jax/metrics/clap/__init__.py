"""CLAP (contrastive audio-text) in Flax: HTS-AT audio tower, RoBERTa text tower (docs/clap.md)."""
