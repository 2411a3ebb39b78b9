"""A fast stand-in for the train CLI: the sweep's flags in, a results JSON out.

PQ is 50 plus the number of bindings with the value False. Bindings steer it:
'Fake.fail=True' exits 1; 'Fake.no_eval=True' exits 0 without results;
'Fake.crash_once=True' exits 1 after writing a "checkpoint" on the first call
and resumes from it on the next. Each call is counted in <model_dir>/calls.
"""
import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument('--mode')
parser.add_argument('--model_dir')
parser.add_argument('--gin_file')
parser.add_argument('--gin_param', action='append', default=[])
args = parser.parse_args()

os.makedirs(os.path.join(args.model_dir, 'eval'), exist_ok=True)
calls_path = os.path.join(args.model_dir, 'calls')
calls = int(open(calls_path).read()) + 1 if os.path.exists(calls_path) else 1
with open(calls_path, 'w') as f:
  f.write(str(calls))
print('fake train', ' '.join(sys.argv[1:]))
if 'Fake.fail=True' in args.gin_param:
  sys.exit('fake training failed')
if 'Fake.no_eval=True' in args.gin_param:
  sys.exit(0)
checkpoint = os.path.join(args.model_dir, 'checkpoint')
resumed_from = int(open(checkpoint).read()) if os.path.exists(checkpoint) else 0
with open(checkpoint, 'w') as f:
  f.write('300')
if 'Fake.crash_once=True' in args.gin_param and not resumed_from:
  sys.exit('fake training interrupted at step 300')
pq = 50.0 + sum(binding.endswith('=False') for binding in args.gin_param)
results = {'pq': pq, 'pq_th': pq + 1, 'pq_st': pq - 1, 'sq': 80.0, 'rq': 60.0,
           'step': 600, 'resumed_from': resumed_from, 'gin_param': args.gin_param,
           'gin_file': args.gin_file, 'mode': args.mode}
for step in (300, 600):
  with open(os.path.join(args.model_dir, 'eval', f'results-{step}.json'), 'w') as f:
    json.dump(dict(results, step=step), f)
