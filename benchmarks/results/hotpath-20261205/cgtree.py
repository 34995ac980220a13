"""Callees of functions matching a regex in a callgrind out file, with inclusive costs.
python cgtree.py FILE REGEX [N_PER_REQUEST]"""
import sys, re, collections
path, pat = sys.argv[1], re.compile(sys.argv[2])
per = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
names = {}
def name(kind, rest):
    m = re.match(r"\((\d+)\)(?: (.*))?", rest)
    if not m: return rest
    key = (kind, m.group(1))
    if m.group(2): names[key] = m.group(2)
    return names.get(key, rest)
selfc = collections.Counter(); callees = collections.defaultdict(collections.Counter); ncalls = collections.defaultdict(collections.Counter)
fn = None; cfn = None; pending_calls = None
for line in open(path, errors="replace"):
    line = line.rstrip("\n")
    if line.startswith("fn="):
        fn = name("fn", line[3:]); continue
    if line.startswith("cfn="):
        cfn = name("fn", line[4:]); continue
    if line.startswith("calls="):
        pending_calls = int(line[6:].split()[0]); continue
    if line and (line[0].isdigit() or line[0] in "+-*"):
        parts = line.split()
        if len(parts) < 2: continue
        cost = int(parts[1])
        if pending_calls is not None:
            callees[fn][cfn] += cost; ncalls[fn][cfn] += pending_calls; pending_calls = None
        else:
            selfc[fn] += cost
    # file/ob lines ignored
for f in sorted({f for f in list(selfc) + list(callees) if pat.search(f)}):
    inc = selfc[f] + sum(v for k, v in callees[f].items() if k != f)
    print(f"== {f}: self {selfc[f]/per:,.0f}  inclusive~ {inc/per:,.0f}")
    for c, v in callees[f].most_common(25):
        print(f"     {v/per:10,.0f}  calls {ncalls[f][c]/per:6.2f}  {c}")
