"""aac_jax.data.synthetic: the built-in synthetic sound-scene benchmark.

Modules:
  events.py       signal synthesis of the 14 event types.
  scenes.py       sampling a scene (events, attributes, timing) and rendering it.
  lexicon.py      the words of the captions, shared by grammar and parser.
  captions.py     the paraphrasing caption grammar (5 references per clip).
  clips.py        one example from (seed, split, index).
  diagnostics.py  caption parser and event scorer (`score_captions`).
  builder.py      the TFDS builder `synthetic_aac`; importing it registers
                  the dataset with TFDS (kept out of this file so that
                  `diagnostics` and the generator do not import TFDS).
"""
