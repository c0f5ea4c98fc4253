"""Policy-gradient pieces shared by lm/objectives/policy_gradient.py: rollouts, advantages, KL, losses."""
