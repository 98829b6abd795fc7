"""Criteria: one module per criterion, each a ``Scorer`` registered by name.

``list_criteria()`` names them; ``create_criterion(name, **params)`` builds one. Importing this package
registers the baselines (``magnitude.py``) and the five interpretability criteria.
"""
from pruning.criteria.base import (Batch, ChannelGroup, ScoreResult, Scorer, ScoringContext, create_criterion,
                                   is_criterion, list_criteria, normalise_scores, register_criterion)
from pruning.criteria import magnitude  # noqa: F401  (registers l1, l2, random, fpgm, taylor)
from pruning.criteria import dissection  # noqa: F401  (registers dissection)
from pruning.criteria import layer_probe  # noqa: F401  (registers layer_probe)
from pruning.criteria import functionality  # noqa: F401  (registers functionality)
from pruning.criteria import redundancy  # noqa: F401  (registers redundancy)
from pruning.criteria import visual_similarity  # noqa: F401  (registers visual_similarity)

__all__ = ["Batch", "ChannelGroup", "ScoreResult", "Scorer", "ScoringContext", "create_criterion",
           "is_criterion", "list_criteria", "normalise_scores", "register_criterion"]
