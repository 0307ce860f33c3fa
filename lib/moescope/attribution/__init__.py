"""Paper 1, knowledge attribution in MoE (Li et al., ACL 2025).

Where each part lives:

- :mod:`.lpi`          LPI scores at every level (layer, head, expert, expert neuron): ``attribute``
- :mod:`.summaries`    the paper's aggregates (FFN gain, efficiency, peak, stage shares, expert ranking)
- :mod:`.tasks`        the paper's tasks as prompts; scores, attribution and facts every finding starts from
- findings, one module each: :mod:`.efficiency` (Table 1), :mod:`.depth` (depth stages, peak),
  :mod:`.ablation` (Table 2), :mod:`.blocking` (Table 5), :mod:`.coordination` (heads guide experts),
  :mod:`.neurons` (basic vs refinement), :mod:`.explorer` (one prompt, every level), :mod:`.checks` (identities)
- :mod:`.replicas`     seeds and depth-matched MoE / dense groups (from the organism registry)
- :mod:`.paper`        the paper's numbers; :mod:`.claims` every claim as data (rule, control, preconditions);
  :mod:`.evidence`     the kit's estimate of each claim, decided; :mod:`.figures` one figure per finding
- :mod:`.ground_truth` attribution and blocking checked against a planted organism's known experts (nb 45)
- :mod:`.benchmark`    speed of neuron-level attribution
"""
from .lpi import Attribution, Readout, attribute, attribute_relations

__all__ = ["Attribution", "Readout", "attribute", "attribute_relations"]
