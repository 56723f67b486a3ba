"""The job times of two `make demo` logs side by side, and what the newer run's jobs would take on the older run's
machine (each newer job scaled by the older/newer ratio of the training jobs, whose code is the same in both):
    git show de3529a:results/demo/demo.log > /tmp/old.log      # the run of db59c90, on another machine
    python results/demo/compare_times.py /tmp/old.log results/demo/demo.log
"""
import re
import sys

FINE_TUNES = ("clex", "full-yarn", "cream-yarn", "pose-yarn", "pose-linear")
old, new = ({m[1]: int(m[2]) for m in re.finditer(r"^  (\S.*?): done in (\d+) s", open(f).read(), re.M)}
            for f in sys.argv[1:3])
total = lambda log, pick: sum(s for job, s in log.items() if pick(job))
ratio = lambda pick: total(old, pick) / total(new, pick)
machine = ratio(lambda j: j in FINE_TUNES)
print(f"training jobs (same code): older / newer {machine:.2f}x; the base (2 threads) {old['base'] / new['base']:.2f}x")
for kind in ("passkey", "ppl"):
    r = ratio(lambda j: j.endswith(kind))
    print(f"{kind} evaluations: {r:.2f}x, {r / machine:.2f}x beyond the machine")
workers = total(new, lambda j: j not in ("base",) and not j.startswith("data"))
print(f"newer run on the older machine: base {old['base']} s + jobs {workers} s x {machine:.2f} / 2 workers = "
      f"{(old['base'] + workers * machine / 2) / 60:.1f} min (before process start-up and imbalance)")
