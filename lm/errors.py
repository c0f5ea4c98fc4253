"""The exceptions launch.py turns into an exit status: a problem with the input (2) or a stop on a signal."""


class UserError(Exception):
  """Bad config, missing file, corrupt checkpoint, malformed data: something the user can fix."""


class Preempted(Exception):
  """SIGTERM (status 143, so schedulers requeue the job) or Ctrl-C (130) arrived; a checkpoint was saved."""

  def __init__(self, message: str, status: int = 143):
    super().__init__(message)
    self.status = status
