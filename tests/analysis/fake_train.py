"""A fast stand-in for the train CLI: the sweep's flags in, a results JSON out.

PQ is 50 plus the number of bindings with the value False, plus
`Fake.offsets[seed]` when 'Fake.offsets=[...]' is bound (seed from
'ExperimentConfig.seed=<s>', default 0). Bindings steer it: 'Fake.fail=True'
exits 1; 'Fake.no_eval=True' exits 0 without results; 'Fake.crash_once=True'
exits 1 after writing a "checkpoint" on the first call and resumes from it on
the next; 'Fake.sleep=<seconds>' sleeps before writing results;
'Fake.kill_parent=True' kills the process that started it (a lost engine worker). Each call is
counted in <model_dir>/calls; the results record the process's start and end
times and its TF_NUM_INTRAOP_THREADS.
"""
import argparse
import ast
import json
import os
import signal
import sys
import time

started = time.time()
parser = argparse.ArgumentParser()
parser.add_argument('--mode')
parser.add_argument('--model_dir')
parser.add_argument('--gin_file')
parser.add_argument('--gin_param', action='append', default=[])
args = parser.parse_args()
bindings = dict(binding.split('=', 1) for binding in args.gin_param)

os.makedirs(os.path.join(args.model_dir, 'eval'), exist_ok=True)
calls_path = os.path.join(args.model_dir, 'calls')
calls = int(open(calls_path).read()) + 1 if os.path.exists(calls_path) else 1
with open(calls_path, 'w') as f:
  f.write(str(calls))
print('fake train', ' '.join(sys.argv[1:]))
if bindings.get('Fake.fail') == 'True':
  sys.exit('fake training failed')
if bindings.get('Fake.kill_parent') == 'True':
  os.kill(os.getppid(), signal.SIGKILL)
  sys.exit('killed the parent process')
if bindings.get('Fake.no_eval') == 'True':
  sys.exit(0)
checkpoint = os.path.join(args.model_dir, 'checkpoint')
resumed_from = int(open(checkpoint).read()) if os.path.exists(checkpoint) else 0
with open(checkpoint, 'w') as f:
  f.write('300')
if bindings.get('Fake.crash_once') == 'True' and not resumed_from:
  sys.exit('fake training interrupted at step 300')
time.sleep(float(bindings.get('Fake.sleep', 0)))
seed = int(bindings.get('ExperimentConfig.seed', 0))
pq = 50.0 + sum(binding.endswith('=False') for binding in args.gin_param)
if 'Fake.offsets' in bindings:
  pq += ast.literal_eval(bindings['Fake.offsets'])[seed]
results = {'pq': pq, 'pq_th': pq + 1, 'pq_st': pq - 1, 'sq': 80.0, 'rq': 60.0,
           'pq_ci_low': pq - 2, 'pq_ci_high': pq + 2,
           'step': 600, 'resumed_from': resumed_from, 'gin_param': args.gin_param,
           'gin_file': args.gin_file, 'mode': args.mode, 'started': started,
           'ended': time.time(), 'threads': os.environ.get('TF_NUM_INTRAOP_THREADS')}
for step in (300, 600):
  with open(os.path.join(args.model_dir, 'eval', f'results-{step}.json'), 'w') as f:
    json.dump(dict(results, step=step), f)
