"""The exceptions launch.py turns into an exit status: a problem with the input (2) or a preemption (143)."""


class UserError(Exception):
  """Bad config, missing file, corrupt checkpoint, malformed data: something the user can fix."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved. launch.py exits with status 143 so schedulers requeue the job."""
