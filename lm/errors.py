"""The one exception type users see: a problem with their input, reported as one line (exit status 2)."""


class UserError(Exception):
  """Bad config, missing file, corrupt checkpoint, malformed data: something the user can fix."""
