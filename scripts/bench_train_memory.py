r"""Peak memory of one training step with and without recompute, and its time cost.

Memory: `analysis.cost.training_step_peak_memory` (a fresh process per figure;
the real PanopticLoss, batch 1, COCO's 133 classes and 128 clusters): the growth
of the peak RSS from after the imports (model build, trace, forward, loss,
backward and, in mode `train_step`, the AdamW update and its slots), then in
parentheses from after the model is built (the step alone) and TensorFlow's
peak tensor allocation of the step alone. Mode `forward_backward` stops at the
gradients, as a forward + backward of another implementation is measured. A
process whose resident memory grows past what the machine has available when it starts
(minus --headroom_gib) is stopped and recorded as not fitting, so a step too big
for the machine cannot push it into swap.

Time: one process per config at --time_size builds the model once and traces
its forward + backward pass (model, PanopticLoss, gradients: what recompute
changes) with recompute and without, then times them in turns
(`analysis.timing`); the cost is the median of the per-round ratios.

  python scripts/bench_train_memory.py \
      --configs=max_deeplab_s,cmt_deeplab_s,cmt_deeplab_l,cmt_deeplab_l_rfn \
      --sizes=641,1025

--search: per config and size, the fastest memory policy whose peak memory stays
within --budget_gib, by the method of `analysis.recompute_search`: the memory of
'all', 'none' and each 'all - part' (a fresh process each, as above; 'all'
first, and nothing else if it is over the budget), their step times as ratios
to 'all' (each timing process traces 'all' and at most --search_group - 1 other
candidates, so the live traced steps stay bounded), a greedy choice, and its
verification: a memory measurement (backed off while over the budget) and a
timing against 'all' and 'none'. Each search prints a Markdown table of the
candidates and the chosen policy as gin bindings. --search_time_size times the
candidates at a smaller crop (cheaper; a part's time saved is a fraction of the
step); --search_memory_file keeps the memory figures for a rerun:

  python scripts/bench_train_memory.py --search --configs=cmt_deeplab_s \
      --sizes=1025 --budget_gib=5.99 --search_time_size=641 \
      --search_memory_file=cmt_deeplab_s_1025.json
"""
import json
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags

from cmt_deeplab_tf.analysis import recompute_search as rs

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', ['max_deeplab_s', 'cmt_deeplab_s', 'cmt_deeplab_l',
                              'cmt_deeplab_l_rfn'], 'Named model configs.')
flags.DEFINE_list('sizes', ['641', '1025'], 'Square crop sizes of the memory figures.')
flags.DEFINE_list('recompute', ['off', 'on'], 'Recompute settings of the memory figures.')
flags.DEFINE_list('modes', ['train_step'], 'What each memory probe runs: train_step '
                  'and / or forward_backward (analysis.cost.PROBE_MODES).')
flags.DEFINE_enum('mixed_precision', None, ['mixed_bfloat16', 'mixed_float16'],
                  'Dtype policy of the memory probes (ExperimentConfig.mixed_precision; '
                  'default float32).')
flags.DEFINE_integer('time_size', 641, 'Crop size of the step-time comparison (0: skip).')
flags.DEFINE_list('time_configs', ['max_deeplab_s', 'cmt_deeplab_s'],
                  'Configs whose step time is compared (each traces two steps).')
flags.DEFINE_integer('time_rounds', 3, 'Timed steps per setting, in turns.')
flags.DEFINE_float('headroom_gib', 2.0, 'Memory left to the rest of the machine.')
flags.DEFINE_bool('search', False, 'Search the fastest policy within --budget_gib '
                  'per config and size (see the module docstring).')
flags.DEFINE_float('budget_gib', None, 'Peak-memory budget of --search (GiB).')
flags.DEFINE_enum('search_mode', 'forward_backward', ['forward_backward', 'train_step'],
                  'What the memory probes of --search run (analysis.cost.PROBE_MODES): '
                  "forward_backward, as another implementation's step is measured "
                  '(scripts/bench_train_vs_deeplab2.py), or the whole train_step (+ '
                  'AdamW and its slots, the same for every policy).')
flags.DEFINE_list('search_parts', [], 'Parts of several kinds measured as one by '
                  "--search, each 'kind+kind...' (e.g. backbone_stage4+backbone_stage5); "
                  'a kind in none is its own part. Fewer candidates, a cheaper search.')
flags.DEFINE_integer('search_group', 8, 'Traced steps per timing process of --search '
                     "('all' and up to this many - 1 other candidates); >= 2.")
flags.DEFINE_integer('search_time_size', 0, 'Crop size at which --search times its '
                     'candidates (0: the searched size). A part\'s time saved is a '
                     'fraction of the step, about the same at a smaller crop, which '
                     'traces and runs faster; memory is always measured at the '
                     'searched size.')
flags.DEFINE_string('search_memory_file', None, 'JSON file of --search\'s memory '
                    'figures: read, and written after each probe, so a rerun measures '
                    'only what it does not hold (analysis.recompute_search.MemoryFile; '
                    'delete it after changing a model).')
flags.DEFINE_string('time_one', None, 'Internal: time one config in this process.')
flags.DEFINE_string('time_policies', None, 'Internal: JSON [[build_model.recompute, '
                    'PanopticLoss.recompute], ...] the --time_one process times.')

NUM_CLASSES, NUM_CLUSTERS = 133, 128
# A timed setting: (build_model.recompute, PanopticLoss.recompute).
Setting = Tuple[str, bool]
# Recompute off and on: the model's memory policy (modeling/recompute_policy.py)
# and the loss's switch, as coco/base.gin sets them.
SETTINGS = {'off': (rs.NONE, False), 'on': (rs.ALL, True)}


def _available_bytes() -> int:
  with open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('/proc/meminfo has no MemAvailable.')


def _limit_bytes() -> int:
  return _available_bytes() - int(FLAGS.headroom_gib * 2**30)


def _memory(name: str, size: int, bindings: Sequence[str], mode: str, limit: int):
  from cmt_deeplab_tf.analysis import cost  # pylint: disable=g-import-not-at-top
  if FLAGS.mixed_precision:
    bindings = [*bindings, f"ExperimentConfig.mixed_precision = '{FLAGS.mixed_precision}'"]
  return cost.training_step_peak_memory(name, NUM_CLASSES, NUM_CLUSTERS, size, size,
                                        bindings, memory_limit_bytes=limit, mode=mode)


def _memory_cell(name: str, size: int, setting: str, mode: str) -> str:
  """'total (step alone; allocator peak of the step)' in GiB."""
  limit = _limit_bytes()
  try:
    result = _memory(name, size, rs.bindings(*SETTINGS[setting]), mode, limit)
  except MemoryError:
    return f'> {limit / 2**30:.1f} (does not fit)'
  except RuntimeError as e:
    return f'failed: {str(e).splitlines()[0][:90]}'  # Its code, and a kill.
  details = '; '.join(f'{result[key] / 2**30:.2f}' for key in
                      ('step_bytes', 'allocator_step_bytes') if key in result)
  return f'{result["bytes"] / 2**30:.2f} ({details})'


def _time_one(name: str, size: int, settings: Sequence[Setting]) -> None:
  """In this process: median seconds of each setting's forward + backward pass
  (model, PanopticLoss, gradients: what a policy changes; the optimizer update is
  the same for all), and ratios to the first.

  Prints JSON {'seconds': [...], 'ratios': [...]}: one model, one step traced
  per setting, timed in turns.
  """
  from cmt_deeplab_tf.analysis import cost  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.analysis import timing  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.modeling import builder  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.losses import panoptic_loss  # pylint: disable=g-import-not-at-top
  model = cost.build(name, NUM_CLASSES, NUM_CLUSTERS)
  batch = cost.random_training_batch(size, size, NUM_CLASSES, NUM_CLUSTERS)
  steps = {}
  for index, (policy, loss_recompute) in enumerate(settings):
    builder.set_recompute(model, policy)
    steps[str(index)] = step = cost.forward_backward_step(
        model, panoptic_loss.PanopticLoss(num_classes=NUM_CLASSES, global_batch_size=1,
                                          recompute=loss_recompute))
    step(batch)  # Traced with this policy.
  # The function computes every gradient; only the loss is copied to the host.
  timings = timing.interleaved({key: (lambda s=step: s(batch)[0])
                                for key, step in steps.items()},
                               rounds=FLAGS.time_rounds, warmup=0)
  print(json.dumps({'seconds': [timings.median(key) for key in steps],
                    'ratios': [timings.ratio_summary(key, '0')[0] for key in steps]}),
        flush=True)


def _time(name: str, size: int,
          settings: Sequence[Setting]) -> Optional[Dict[str, List[float]]]:
  """`_time_one` in a fresh process; None if it went over the machine's memory.

  Raises:
    RuntimeError: If it failed otherwise.
  """
  from cmt_deeplab_tf.analysis import cost  # pylint: disable=g-import-not-at-top
  command = [sys.executable, __file__, f'--time_one={name}', f'--time_size={size}',
             f'--time_rounds={FLAGS.time_rounds}',
             f'--time_policies={json.dumps([list(s) for s in settings])}']
  try:
    return cost.run_fresh_process(command, _limit_bytes(), f'Timing {name} at {size}')
  except MemoryError:
    return None


def _time_cell(name: str, size: int) -> str:
  try:
    seconds = _time(name, size, [SETTINGS['off'], SETTINGS['on']])
  except RuntimeError as e:
    return f'failed: {str(e).splitlines()[0]}'
  if seconds is None:
    return f'> {_limit_bytes() / 2**30:.1f} GiB (does not fit)'
  (off, on), ratio = seconds['seconds'], seconds['ratios'][1]
  return f'{off:.2f} / {on:.2f} s (+{100 * (ratio - 1):.0f}%)'


def _gib(value: Optional[int]) -> str:
  return 'does not fit' if value is None else f'{value / 2**30:.2f}'


class _Search:
  """The measurements of one (config, size) search, each made once."""

  def __init__(self, name: str, size: int):
    from cmt_deeplab_tf.modeling import builder  # pylint: disable=g-import-not-at-top
    self.name, self.size = name, size
    # The kinds need no variables: the model is not built further.
    self.kinds = builder.recompute_kinds(
        builder.build_model(name, NUM_CLASSES, NUM_CLUSTERS))
    self.parts = rs.parts_of(self.kinds, FLAGS.search_parts)
    self.candidates = rs.candidates(self.parts)
    self.memory = {}  # {policy: peak bytes, None if over the machine's memory}
    self.time_size = FLAGS.search_time_size or size
    self.saved = (rs.MemoryFile(FLAGS.search_memory_file)
                  if FLAGS.search_memory_file else None)

  def setting(self, policy) -> Setting:
    return rs.model_policy(policy, self.kinds), rs.recomputes_loss(policy)

  def measure(self, policy) -> Optional[int]:
    """Peak bytes of one step with `policy` (a fresh process, once per policy)."""
    if policy in self.memory:
      return self.memory[policy]
    key = (self.name, self.size, FLAGS.search_mode, *self.setting(policy))
    if self.saved is not None and key in self.saved:
      self.memory[policy], source = self.saved[key], FLAGS.search_memory_file
    else:
      try:
        self.memory[policy] = _memory(self.name, self.size,
                                      rs.gin_bindings(policy, self.kinds),
                                      FLAGS.search_mode, _limit_bytes())['bytes']
      except MemoryError:
        self.memory[policy] = None
      source = 'measured'
      if self.saved is not None and self.memory[policy] is not None:
        self.saved.put(key, self.memory[policy])
    print(f'{self.name} {self.size}: {self.setting(policy)} '
          f'{_gib(self.memory[policy])} GiB ({source})', file=sys.stderr, flush=True)
    return self.memory[policy]

  def time(self, policies) -> Dict[object, Tuple[float, float]]:
    """{policy: (median seconds, median ratio to 'all')}, 'all' included.

    'all' is traced first in every timing process, with at most
    --search_group - 1 others; a group over the machine's memory is left out.
    """
    everything = self.candidates[rs.ALL]
    others = [p for p in dict.fromkeys(policies) if p != everything]
    size = FLAGS.search_group - 1
    times, all_seconds = {}, []
    for start in range(0, len(others), size):
      group = others[start:start + size]
      result = _time(self.name, self.time_size,
                     [self.setting(p) for p in [everything] + group])
      if result is None:
        continue
      all_seconds.append(result['seconds'][0])
      for policy, seconds, ratio in zip(group, result['seconds'][1:],
                                        result['ratios'][1:]):
        times[policy] = (seconds, ratio)
    if all_seconds:
      times[everything] = (statistics.median(all_seconds), 1.0)
    return times


def _fmt(value: Optional[float], fmt: str) -> str:
  return '-' if value is None else fmt.format(value)


def _candidate_table(search: _Search, times, costs) -> str:
  """Each candidate's memory, step time and ratio to 'all'; each part's cost."""
  from cmt_deeplab_tf.analysis import paper_tables  # pylint: disable=g-import-not-at-top
  everything = search.candidates[rs.ALL]
  cost_of = {everything - {cost.part}: cost for cost in costs}
  rows = []
  for label, policy in search.candidates.items():
    seconds, ratio = times.get(policy, (None, None))
    cost = cost_of.get(policy)
    part_cells = (['-', '-'] if cost is None else
                  [f'{cost.added_bytes / 2**30:+.2f}',
                   f'{100 * cost.saved_fraction:+.1f}%'])
    rows.append([label, _gib(search.memory[policy]), _fmt(seconds, '{:.2f}'),
                 _fmt(ratio, '{:.3f}'), *part_cells])
  return paper_tables.markdown_table(
      ['candidate', 'memory (GiB)', 'step time (s)', "time / 'all'",
       'memory added (GiB)', 'time saved'], rows)


def _chosen_lines(search: _Search, choice: rs.Choice) -> List[str]:
  """The chosen policy, verified: memory, a timing against 'all' and 'none', gin."""
  from cmt_deeplab_tf.analysis import paper_tables  # pylint: disable=g-import-not-at-top
  chosen, nothing = choice.policy(search.parts), search.candidates[rs.NONE]
  verified = search.time([nothing, chosen] if search.memory[nothing] is not None
                         else [chosen])
  seconds, to_all = verified.get(chosen, (None, None))
  to_none = (to_all / verified[nothing][1]
             if to_all is not None and nothing in verified else None)
  table = paper_tables.markdown_table(
      ['chosen: model, loss recomputed', 'memory (GiB)', 'step time (s)',
       "time / 'none'", "time / 'all'"],
      [[f"`'{rs.model_policy(chosen, search.kinds)}'`, loss {rs.recomputes_loss(chosen)}",
        _gib(choice.memory_bytes), _fmt(seconds, '{:.2f}'), _fmt(to_none, '{:.3f}'),
        _fmt(to_all, '{:.3f}')]])
  return [f"Dropped from 'all' (greedy order): {', '.join(choice.dropped) or '-'}; "
          f"backed off by the verification: {', '.join(choice.backed_off) or '-'}.",
          '', table, '', '```', *rs.gin_bindings(chosen, search.kinds), '```']


def _search(name: str, size: int, budget: int) -> Tuple[str, bool]:
  """The Markdown report of one search, and whether a policy fits the budget."""
  search = _Search(name, size)
  timed_at = search.time_size
  lines = [f'### {name}, {size}x{size}, budget {budget / 2**30:.2f} GiB'
           + (f', timed at {timed_at}x{timed_at}' if timed_at != size else ''), '']
  if not search.kinds:
    lines += [f"{name} has no recompute parts: only build_model.recompute = 'none' "
              "exists; the search covers the loss's switch only.", '']
  everything = search.candidates[rs.ALL]
  all_bytes = search.measure(everything)
  try:
    if all_bytes is None:
      raise ValueError(f"'all' does not fit this machine's "
                       f'{_limit_bytes() / 2**30:.1f} GiB (--headroom_gib).')
    rs.check_budget(all_bytes, budget)
  except ValueError as e:
    return '\n'.join(lines + [f'No policy fits: {e}']), False
  for policy in search.candidates.values():
    search.measure(policy)
  times = search.time([p for p in search.candidates.values()
                       if search.memory[p] is not None])
  costs = rs.part_costs(search.parts, search.memory,
                        {policy: ratio for policy, (_, ratio) in times.items()})
  choice = rs.choose(costs, all_bytes, budget,
                     lambda dropped: search.measure(everything - set(dropped)))
  lines += [_candidate_table(search, times, costs), '', *_chosen_lines(search, choice)]
  return '\n'.join(lines), True


def _search_main() -> None:
  if FLAGS.budget_gib is None or FLAGS.budget_gib <= 0:
    raise app.UsageError(f'--search needs --budget_gib > 0, got {FLAGS.budget_gib}.')
  if FLAGS.search_group < 2:
    raise app.UsageError(f'--search_group must be >= 2, got {FLAGS.search_group}.')
  if FLAGS.search_time_size < 0:
    raise app.UsageError(f'--search_time_size must be >= 0, got '
                         f'{FLAGS.search_time_size}.')
  budget = int(FLAGS.budget_gib * 2**30)
  fits = True
  for name in FLAGS.configs:
    for size in FLAGS.sizes:
      report, fit = _search(name, int(size), budget)
      print(report + '\n', flush=True)
      fits &= fit
  if not fits:
    sys.exit(1)


def main(argv):
  del argv
  if FLAGS.time_one:
    _time_one(FLAGS.time_one, FLAGS.time_size,
              [tuple(setting) for setting in json.loads(FLAGS.time_policies)])
    return
  if FLAGS.search:
    _search_main()
    return
  sizes = [int(s) for s in FLAGS.sizes]
  settings = FLAGS.recompute
  header = ['config', 'mode'] + [f'{s}x{s} {setting} (GiB)' for s in sizes
                                 for setting in settings]
  if FLAGS.time_size:
    header.append(f'step time {FLAGS.time_size}: off / on')
    timed = set(FLAGS.time_configs)
  rows = []
  for name in FLAGS.configs:
    for index, mode in enumerate(FLAGS.modes):
      row = [name, mode] + [_memory_cell(name, size, setting, mode)
                            for size in sizes for setting in settings]
      if FLAGS.time_size:
        row.append(_time_cell(name, FLAGS.time_size) if name in timed and not index
                   else '-')
      rows.append(row)
      print(' | '.join(row), file=sys.stderr, flush=True)  # Progress.
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for row in rows:
    print('| ' + ' | '.join(row) + ' |')


if __name__ == '__main__':
  app.run(main)
