"""Unit tests of the trainer's bookkeeping."""
import math

import pytest

from cmt_deeplab_tf.training import trainer


def test_non_finite_loss_stops_and_names_the_term():
  trainer.check_finite({'total': 1.0, 'mask_id': 0.5}, step=7)
  with pytest.raises(trainer.NonFiniteLossError, match=r"'semantic' is nan at step 12"):
    trainer.check_finite({'total': math.nan, 'semantic': math.nan, 'mask_id': 1.0}, step=12)
  with pytest.raises(trainer.NonFiniteLossError, match=r"'aux/mask_id' is inf"):
    trainer.check_finite({'aux/mask_id': math.inf}, step=1)


@pytest.mark.parametrize('seconds, text', [(59, '0m59s'), (61, '1m01s'), (3725, '1h02m05s'),
                                           (math.inf, '?')])
def test_eta_format(seconds, text):
  assert trainer._format_seconds(seconds) == text  # pylint: disable=protected-access
