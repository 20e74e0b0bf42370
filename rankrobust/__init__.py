"""rankrobust: how the loss of a recommender shapes its accuracy, robustness and fairness.

Train MF and LightGCN with BPR, BCE, MSE, CCL, softmax (SL) and bilateral
softmax (BSL) losses on real data corrupted at controlled rates, evaluate by
full ranking, and analyse fairness, prediction variance and DRO equivalence.
"""

__version__ = "0.1.0"
