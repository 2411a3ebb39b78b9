"""Choosing a recompute policy by measurement: the fastest one under a memory budget.

A policy here is the set of parts the backward pass of training recomputes: the
part kinds the model has (`builder.recompute_kinds`, kinds of
`modeling.recompute_policy`) and `LOSS`, the loss's own switch
(`PanopticLoss.recompute`). 'all' recomputes every part, 'none' none;
`gin_bindings` turns a set into the two gin bindings that select it.

The method (`scripts/bench_train_memory.py --search` measures, this module chooses):

1. Measure the two ends, 'all' and 'none', and for each part k the policy
   'all - k' (everything recomputed but k): its peak memory M (one batch-1
   training step in a fresh process, `analysis.cost.training_step_peak_memory`)
   and its step time T as the median per-round ratio to 'all', timed in turns
   with 'all' in one process (`analysis.timing.interleaved`).
2. Part k's cost of no longer being recomputed (`part_costs`): memory added
   M(all - k) - M(all), and time saved 1 - T(all - k) / T(all), a fraction of
   the step of 'all'.
3. Greedy choice (`greedy_drops`): the parts that save time, by time saved per
   byte added, largest first (a part adding no memory comes first); each is
   dropped from 'all' if the estimate M(all) + the memory added by the parts
   dropped so far stays within the budget, otherwise skipped (a later, smaller
   one may still fit). The estimate assumes the parts' memory adds up.
4. Verification (`choose`): the chosen policy's memory is measured; if it is
   over the budget (the parts' memory did not add up) the last part dropped is
   recomputed again and the policy measured again, until one fits ('all' at
   worst, measured in 1). An 'all' over the budget is an error: no policy fits.
"""
import dataclasses
import json
import os
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from cmt_deeplab_tf.modeling import recompute_policy

LOSS = 'loss'  # The loss's terms (`PanopticLoss.recompute`).
ALL, NONE = recompute_policy.ALL, recompute_policy.NONE

Policy = FrozenSet[str]  # The parts recomputed.


GROUP = '+'  # Joins the kinds of a part measured as one ('backbone_stage4+backbone_stage5').


def parts_of(model_kinds: Sequence[str], groups: Sequence[str] = ()) -> Tuple[str, ...]:
  """Every part a policy can recompute: the model's kinds, then `LOSS`.

  Args:
    model_kinds: the model's part kinds (`builder.recompute_kinds`).
    groups: parts of several kinds, each 'kind+kind...', measured (and dropped
      from 'all') as one: fewer candidates, a cheaper search. Each takes the
      place of its first kind; a kind may be in one group at most.

  Raises:
    ValueError: naming a group with a kind the model (or `LOSS`) does not have,
      or a kind in two groups.
  """
  every = tuple(model_kinds) + (LOSS,)
  grouped = {}
  for group in groups:
    for kind in group.split(GROUP):
      if kind not in every or kind in grouped:
        raise ValueError(f'--search_parts: {group!r} has {kind!r}, which is '
                         f'{"in two groups" if kind in grouped else "no part"}; '
                         f'the parts are {every}.')
      grouped[kind] = group
  return tuple(dict.fromkeys(grouped.get(kind, kind) for kind in every))


def kinds_in(policy: Policy) -> FrozenSet[str]:
  """The kinds (`LOSS` included) of a policy's parts, groups split."""
  return frozenset(kind for part in policy for kind in part.split(GROUP))


def candidates(parts: Sequence[str]) -> Dict[str, Policy]:
  """{name: policy} of what the search measures: 'all', 'none', 'all - k' per part.

  'all - k' is left out where it is 'none' (a single part).
  """
  everything = frozenset(parts)
  policies = {ALL: everything, NONE: frozenset()}
  for part in parts:
    if everything - {part} not in policies.values():
      policies[f'{ALL} - {part}'] = everything - {part}
  return policies


def model_policy(policy: Policy, model_kinds: Sequence[str]) -> str:
  """The `build_model.recompute` value of `policy` ('all' for all the model's kinds)."""
  kinds = kinds_in(policy) - {LOSS}
  if not kinds:
    return NONE
  if kinds == frozenset(model_kinds):
    return ALL
  return ','.join(kind for kind in recompute_policy.KINDS if kind in kinds)


def recomputes_loss(policy: Policy) -> bool:
  """Whether `policy` recomputes the loss terms (`PanopticLoss.recompute`)."""
  return LOSS in kinds_in(policy)


def bindings(model_recompute: str, loss_recompute: bool) -> Tuple[str, str]:
  """The gin bindings build_model.recompute and PanopticLoss.recompute."""
  return (f"build_model.recompute = '{model_recompute}'",
          f'PanopticLoss.recompute = {loss_recompute}')


def gin_bindings(policy: Policy, model_kinds: Sequence[str]) -> Tuple[str, str]:
  """The gin bindings of `policy` (`bindings`)."""
  return bindings(model_policy(policy, model_kinds), recomputes_loss(policy))


@dataclasses.dataclass(frozen=True)
class PartCost:
  """What no longer recomputing `part` costs and saves, against 'all'.

  Attributes:
    part: A model kind or `LOSS`.
    added_bytes: M(all - part) - M(all).
    saved_fraction: 1 - T(all - part) / T(all).
  """
  part: str
  added_bytes: int
  saved_fraction: float


def part_costs(parts: Sequence[str], memory: Mapping[Policy, Optional[int]],
               time_ratio: Mapping[Policy, Optional[float]]) -> List[PartCost]:
  """Each part's cost from the measurements of 'all' and 'all - part'.

  Args:
    parts: The parts, as in `candidates`.
    memory: {policy: peak bytes, or None where it did not fit the machine};
      'all' and every 'all - part' measured.
    time_ratio: {policy: step time / that of 'all', or None if not timed}.

  Returns:
    A cost per part whose 'all - part' was measured and timed, in `parts` order
    (none for a part whose 'all - part' did not fit: it cannot be dropped).
  """
  everything = frozenset(parts)
  costs = []
  for part in parts:
    policy = everything - {part}
    if memory.get(policy) is not None and time_ratio.get(policy) is not None:
      costs.append(PartCost(part, memory[policy] - memory[everything],
                            1.0 - time_ratio[policy]))
  return costs


def check_budget(all_bytes: int, budget_bytes: int, flag: str = '--budget_gib') -> None:
  """Raises ValueError, naming `flag`, if even 'all' is over the budget."""
  if all_bytes > budget_bytes:
    raise ValueError(
        f'{flag}={budget_bytes / 2**30:.2f}: no policy fits; even recomputing every '
        f"part ('{ALL}') takes {all_bytes / 2**30:.2f} GiB. Raise {flag} or use a "
        'smaller crop.')


def _ordered(costs: Sequence[PartCost]) -> List[PartCost]:
  """The parts that save time, largest time saved per byte added first."""
  def key(cost):
    if cost.added_bytes <= 0:  # Free: first, the largest saving first.
      return (1, cost.saved_fraction)
    return (0, cost.saved_fraction / cost.added_bytes)
  return sorted((c for c in costs if c.saved_fraction > 0), key=key, reverse=True)


def greedy_drops(costs: Sequence[PartCost], all_bytes: int,
                 budget_bytes: int) -> List[str]:
  """The parts to stop recomputing, in the order chosen (step 3 of the method).

  Raises:
    ValueError: If `all_bytes` is over the budget (`check_budget`).
  """
  check_budget(all_bytes, budget_bytes)
  estimate, drops = all_bytes, []
  for cost in _ordered(costs):
    if estimate + max(cost.added_bytes, 0) <= budget_bytes:
      estimate += max(cost.added_bytes, 0)
      drops.append(cost.part)
  return drops


@dataclasses.dataclass(frozen=True)
class Choice:
  """The verified choice.

  Attributes:
    dropped: The parts no longer recomputed, in the order chosen.
    memory_bytes: The measured peak memory of the chosen policy.
    backed_off: The parts the verification recomputed again, first back-off first.
  """
  dropped: Tuple[str, ...]
  memory_bytes: int
  backed_off: Tuple[str, ...]

  def policy(self, parts: Sequence[str]) -> Policy:
    return frozenset(parts) - set(self.dropped)


def choose(costs: Sequence[PartCost], all_bytes: int, budget_bytes: int,
           measure: Callable[[Tuple[str, ...]], Optional[int]]) -> Choice:
  """The greedy choice, verified and backed off (steps 3 and 4 of the method).

  Args:
    costs: `part_costs`.
    all_bytes: The measured memory of 'all'.
    budget_bytes: The memory budget.
    measure: Measures the policy that drops the given parts: its peak bytes,
      or None if it did not fit the machine (over any budget).

  Returns:
    The `Choice`; with nothing dropped, 'all' (its memory `all_bytes`).

  Raises:
    ValueError: If even 'all' is over the budget (`check_budget`).
  """
  dropped = greedy_drops(costs, all_bytes, budget_bytes)
  backed_off = []
  while dropped:
    measured = measure(tuple(dropped))
    if measured is not None and measured <= budget_bytes:
      return Choice(tuple(dropped), measured, tuple(backed_off))
    backed_off.append(dropped.pop())
  return Choice((), all_bytes, tuple(backed_off))


# A memory figure's key: (config, crop size, probe mode, build_model.recompute,
# PanopticLoss.recompute).
MemoryKey = Tuple[str, int, str, str, bool]
_FIELDS = ('config', 'size', 'mode', 'model_recompute', 'loss_recompute')


class MemoryFile:
  """A search's peak-memory figures, kept in a JSON file across runs.

  A rerun (a new budget, a new timing crop, a search stopped half-way) measures
  only the policies the file does not hold. A figure is only as current as the
  code and machine it was measured with: delete the file after changing a model.
  The file is a JSON list of records {config, size, mode, model_recompute,
  loss_recompute, bytes}. A step that did not fit the machine is not kept: it
  depends on what else ran. Each `put` rewrites the file atomically, so a
  stopped search loses nothing.
  """

  def __init__(self, path: str):
    self.path = path
    self._figures: Dict[MemoryKey, int] = {}
    if os.path.exists(path):
      self._read()

  def _read(self) -> None:
    with open(self.path) as f:
      try:
        records = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'--search_memory_file={self.path}: not JSON ({e}).') from e
    if not isinstance(records, list):
      raise ValueError(f'--search_memory_file={self.path}: expected a list of records.')
    for index, record in enumerate(records):
      missing = [field for field in _FIELDS + ('bytes',)
                 if not isinstance(record, dict) or field not in record]
      if missing or not isinstance(record['bytes'], int):
        raise ValueError(f'--search_memory_file={self.path}: record {index} has no '
                         f'{", ".join(missing) or "whole number of bytes"}.')
      self._figures[tuple(record[field] for field in _FIELDS)] = record['bytes']

  def __contains__(self, key: MemoryKey) -> bool:
    return key in self._figures

  def __getitem__(self, key: MemoryKey) -> int:
    return self._figures[key]

  def put(self, key: MemoryKey, peak_bytes: int) -> None:
    self._figures[key] = peak_bytes
    records = [dict(zip(_FIELDS, k), bytes=v) for k, v in self._figures.items()]
    temporary = f'{self.path}.tmp'
    with open(temporary, 'w') as f:
      json.dump(records, f, indent=1)
    os.replace(temporary, self.path)
