"""Model organisms: small models the kit trains itself.

- gen 1 (:mod:`.zoo` ``ZOO``, :mod:`.training`): 2-4 layer models of each paper family, trained on the relation
  facts until they know them; :mod:`.planted` ``PLANT``: a 2-layer ground truth for expert attribution.
- gen 2 (:mod:`.zoo` ``GEN2``, ``PAIRS``, ``SHARED_MOE``, :mod:`.gen2`): 8- and 16-layer depth-matched MoE / dense
  pairs (``zoo.SEEDS`` per depth), a Qwen-MoE-like model with a shared expert, and a deep planted model with redundant and
  late plants, trained on :mod:`.corpus` (general text + Zipf-distributed facts) with the BPE tokenizer of
  :mod:`.tokenizer`, and scored on held-out templates; :mod:`moescope.attribution.ground_truth` checks
  attribution against the plants.
  All ship with weights; asking for a registered organism whose weights are missing (``zoo.load_card`` /
  ``zoo.require_trained``) raises ``zoo.NotTrainedError`` naming the command that trains it.
"""
