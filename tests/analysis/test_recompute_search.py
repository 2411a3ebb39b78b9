"""The recompute-policy search's choice, on constructed measurements (hand-computed)."""
import pytest

from cmt_deeplab_tf.analysis import recompute_search as rs
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import recompute_policy

GIB = 2**30


def _cost(part, added, saved):
  return rs.PartCost(part, added, saved)


# Per byte: e free, b 0.08, a 0.05, c 0.03, f 0.02; d saves no time.
COSTS = [_cost('a', 2, 0.10), _cost('b', 1, 0.08), _cost('c', 4, 0.12),
         _cost('d', 3, -0.01), _cost('e', 0, 0.01), _cost('f', 1, 0.02)]


def test_greedy_drops_by_time_saved_per_byte_within_the_budget():
  # From 10: e (+0) 10, b (+1) 11, a (+2) 13, c (+4) 17 > 14 skipped, f (+1) 14.
  assert rs.greedy_drops(COSTS, 10, 14) == ['e', 'b', 'a', 'f']
  # Budget 12: e, b (11); a (13) and c (15) skipped; f (12) still fits.
  assert rs.greedy_drops(COSTS, 10, 12) == ['e', 'b', 'f']
  # A part that saves no time is never dropped, whatever the budget.
  assert 'd' not in rs.greedy_drops(COSTS, 10, 100)


def test_a_verified_choice_within_the_budget_is_kept():
  measured = []

  def measure(dropped):
    measured.append(dropped)
    return 13
  choice = rs.choose(COSTS, 10, 14, measure)
  assert choice == rs.Choice(('e', 'b', 'a', 'f'), 13, ())
  assert measured == [('e', 'b', 'a', 'f')]
  assert choice.policy('abcdef') == frozenset('cd')


def test_a_verification_over_the_budget_backs_off_the_last_part_dropped():
  # The parts' memory does not add up: with f and a the step takes 15 > 14.
  actual = {('e', 'b', 'a', 'f'): 15, ('e', 'b', 'a'): 16, ('e', 'b'): 12}
  measured = []

  def measure(dropped):
    measured.append(dropped)
    return actual[dropped]
  choice = rs.choose(COSTS, 10, 14, measure)
  assert choice == rs.Choice(('e', 'b'), 12, ('f', 'a'))
  assert measured == [('e', 'b', 'a', 'f'), ('e', 'b', 'a'), ('e', 'b')]


def test_a_policy_that_does_not_fit_the_machine_backs_off_down_to_all():
  choice = rs.choose(COSTS, 10, 11, lambda dropped: None)  # e, b chosen.
  assert choice == rs.Choice((), 10, ('b', 'e'))


def test_an_all_over_the_budget_is_an_error_naming_the_flag():
  with pytest.raises(ValueError, match=r'--budget_gib=2\.00.*all.*2\.50 GiB'):
    rs.choose(COSTS, int(2.5 * GIB), 2 * GIB, lambda dropped: 0)


def test_part_costs_against_all_skipping_parts_that_did_not_fit():
  parts = ('stem', 'heads', rs.LOSS)
  policies = rs.candidates(parts)
  assert set(policies) == {'all', 'none', 'all - stem', 'all - heads', 'all - loss'}
  memory = {policies['all']: 100, policies['all - stem']: 130,
            policies['all - heads']: None, policies['all - loss']: 90}
  ratio = {policies['all']: 1.0, policies['all - stem']: 0.75,
           policies['all - loss']: 0.9}
  assert rs.part_costs(parts, memory, ratio) == [
      rs.PartCost('stem', 30, 0.25), rs.PartCost(rs.LOSS, -10, pytest.approx(0.1))]


def test_gin_bindings_name_all_none_or_the_kinds_in_their_canonical_order():
  kinds = ('stem', 'backbone_stage2', 'heads')
  assert rs.gin_bindings(frozenset(kinds) | {rs.LOSS}, kinds) == (
      "build_model.recompute = 'all'", 'PanopticLoss.recompute = True')
  assert rs.gin_bindings(frozenset(['heads', 'stem']), kinds) == (
      "build_model.recompute = 'stem,heads'", 'PanopticLoss.recompute = False')
  assert rs.gin_bindings(frozenset([rs.LOSS]), kinds)[0] == (
      "build_model.recompute = 'none'")


def test_a_model_without_recompute_parts_searches_the_loss_switch_only():
  kinds = builder.recompute_kinds(builder.build_model('kmax_tiny', 3, 8))
  assert kinds == ()
  policies = rs.candidates(rs.parts_of(kinds))
  assert policies == {'all': frozenset([rs.LOSS]), 'none': frozenset()}
  assert {rs.model_policy(p, kinds) for p in policies.values()} == {'none'}


def test_recompute_kinds_are_the_parts_a_model_has():
  # MaX-S's transformer layers all run at stride 16 (supplement Fig. 1).
  kinds = builder.recompute_kinds(builder.build_model('max_deeplab_s', 3, 8))
  assert kinds == ('stem', 'backbone_stage2', 'backbone_stage3', 'backbone_stage4',
                   'backbone_stage5', 'pixel_decoder_s16', 'pixel_decoder_s8',
                   'pixel_decoder_s4', 'transformer_s16', 'heads')
  # tiny has one CMT layer per decoder stage: every kind.
  tiny = builder.recompute_kinds(builder.build_model('tiny', 3, 8))
  assert tiny == recompute_policy.KINDS


def test_grouped_kinds_are_one_part_measured_and_bound_as_their_kinds():
  kinds = ('stem', 'backbone_stage2', 'backbone_stage4', 'backbone_stage5', 'heads')
  parts = rs.parts_of(kinds, ['backbone_stage4+backbone_stage5', 'heads+loss'])
  # A group takes its first kind's place; the kinds in no group stay parts.
  assert parts == ('stem', 'backbone_stage2', 'backbone_stage4+backbone_stage5',
                   'heads+loss')
  policies = rs.candidates(parts)
  assert len(policies) == 2 + len(parts)
  # Dropping a group drops every kind in it, the loss's switch included.
  assert rs.gin_bindings(policies['all - backbone_stage4+backbone_stage5'], kinds) == (
      "build_model.recompute = 'stem,backbone_stage2,heads'",
      'PanopticLoss.recompute = True')
  assert rs.gin_bindings(policies['all - heads+loss'], kinds) == (
      "build_model.recompute = 'stem,backbone_stage2,backbone_stage4,backbone_stage5'",
      'PanopticLoss.recompute = False')
  assert rs.gin_bindings(policies['all'], kinds)[0] == "build_model.recompute = 'all'"


@pytest.mark.parametrize('groups, message', [
    (['stem+transformer_s4'], "'transformer_s4', which is no part"),
    (['stem+heads', 'heads+loss'], "'heads', which is in two groups"),
])
def test_a_group_the_model_cannot_have_is_an_error_naming_the_flag(groups, message):
  with pytest.raises(ValueError, match='--search_parts') as error:
    rs.parts_of(('stem', 'heads'), groups)
  assert message in str(error.value)


_KEY = ('cmt_deeplab_s', 1025, 'forward_backward', 'stem,heads', False)


def test_a_memory_file_keeps_its_figures_for_the_next_run(tmp_path):
  path = str(tmp_path / 'memory.json')
  first = rs.MemoryFile(path)
  assert _KEY not in first
  first.put(_KEY, 5 * GIB)
  first.put(('max_deeplab_s', 641, 'train_step', 'all', True), 2 * GIB)
  again = rs.MemoryFile(path)
  assert _KEY in again and again[_KEY] == 5 * GIB
  assert again[('max_deeplab_s', 641, 'train_step', 'all', True)] == 2 * GIB
  # A figure is keyed by every field: another mode is not the same figure.
  assert ('cmt_deeplab_s', 1025, 'train_step', 'stem,heads', False) not in again
  assert [p.name for p in tmp_path.iterdir()] == ['memory.json']  # Nothing half-written.


@pytest.mark.parametrize('text, message', [
    ('{"config": 1', 'not JSON'),
    ('{}', 'expected a list of records'),
    ('[{"config": "tiny", "size": 65, "mode": "train_step", "bytes": 1}]',
     'record 0 has no model_recompute, loss_recompute'),
    ('[{"config": "tiny", "size": 65, "mode": "train_step", "model_recompute": "all", '
     '"loss_recompute": true, "bytes": 1.5}]', 'record 0 has no whole number of bytes'),
])
def test_a_bad_memory_file_is_an_error_naming_the_flag_and_file(tmp_path, text, message):
  path = tmp_path / 'memory.json'
  path.write_text(text)
  with pytest.raises(ValueError, match='--search_memory_file') as error:
    rs.MemoryFile(str(path))
  assert str(path) in str(error.value) and message in str(error.value)
