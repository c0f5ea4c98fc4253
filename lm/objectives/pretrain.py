"""Next-token prediction on plain text (config.data): the shared next-token loss, optional z-loss."""
import dataclasses
import functools

from lm import losses
from lm import objective as objective_lib
from lm import options
from lm.data import lm_batches


@dataclasses.dataclass(frozen=True)
class Options(options.Group):
  """Pretraining has no options of its own: train.z_loss and data.* configure it."""


def build(setup) -> objective_lib.Objective:
  config = setup.config
  objective_lib.parse_options(Options, config)

  @functools.cache
  def windows():
    tokens = lm_batches.split_tokens(config.data, config.data.train_split, setup.tokenizer)
    return lm_batches.RandomWindows(tokens, config.data.seq_len, config.train.batch_size, config.seed)

  return objective_lib.Objective(
      loss_fn=losses.token_loss_fn(setup.model, config.train.z_loss),
      batches=lambda step, params: objective_lib.Batch(windows()(step)),
      batch_shapes=lambda: lm_batches.shapes(config.train.batch_size, config.data.seq_len))
