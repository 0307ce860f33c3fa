"""Paper 1, knowledge attribution in MoE (Li et al., ACL 2025): LPI scores at every level, the paper's
aggregates and findings, its numbers and claims.

``attribute`` / ``attribute_relations`` (from :mod:`.lpi`) are the entry points.
"""
from .lpi import Attribution, Readout, attribute, attribute_relations

__all__ = ["Attribution", "Readout", "attribute", "attribute_relations"]
