"""Policy-gradient pieces (Tunix's rl/ split): a typed rollout batch and teacher-forced log-probs (common.py),
the rollout that makes it (rollout.py), advantage estimators and algorithms registered by name
(advantages.py, algorithms.py), KL estimators and the KL controller (kl.py), and the pure loss (losses.py)."""
