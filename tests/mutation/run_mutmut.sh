#!/usr/bin/env bash
# Mutation testing of the loss engine, the angular losses, Partial FC and the training
# objectives with mutmut 3 (issue 18; results in tests/MUTATION.md). Not in CI: on a
# shared 2-core machine one mutant takes 1–3 minutes (a fresh JAX process and compile).
#
#   bash tests/mutation/run_mutmut.sh losses after       # with the tests of issue 18
#   bash tests/mutation/run_mutmut.sh losses before      # without them
#   bash tests/mutation/run_mutmut.sh objectives after
#   bash tests/mutation/run_mutmut.sh objectives before
#
# The repository is copied to WORKDIR (default /tmp/faceloss_mutmut/<group>_<which>) and
# mutmut runs there, writing its mutants/ next to the copy: the working tree is never
# mutated. Env: WORKDIR, MAX_CHILDREN (default 2), PYTHON (default .venv/bin/python),
# STRIDE (the sample: every STRIDE-th mutant, see below; 1 for all), DRY_RUN=1 (only
# write WORKDIR/sample.txt).
# Output: WORKDIR/results.txt (mutmut results --all true) and WORKDIR/score.txt.
set -euo pipefail
group=${1:?losses|objectives}
which=${2:?before|after}
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
workdir=${WORKDIR:-/tmp/faceloss_mutmut/${group}_${which}}

if [ "$group" = losses ]; then
  modules="faceloss_jax/losses/engine.py faceloss_jax/losses/angular.py
           faceloss_jax/losses/partial_fc.py"
  tests="tests/test_angular.py::test_hand_made_angles tests/test_angular.py::test_check_grads
         tests/test_angular.py::test_chunked_equals_dense
         tests/test_angular.py::test_psi_matches_piecewise_definition
         tests/test_scale.py::test_sampling_keeps_positives_and_fixed_shape
         tests/test_scale.py::test_sampling_rate_one_equals_dense"
  new_tests="tests/test_faults_gradients.py"
  # engine: the clipped sqrt/arccos, cosine, the chunked custom_vjp, the shard combine;
  # angular: the margin functions; partial_fc: the sampling.
  functions="engine.x_safe_sqrt engine.x_safe_arccos engine.x_cosine engine.x__make_chunked_lse
             engine.x__combine_shards angular.x_additive_angular_margin
             angular.x_combined_angular_margin angular.x_multiple_angle_psi
             partial_fc.x_sample_classes partial_fc.x_num_sampled"
  prefix=faceloss_jax.losses
  sample="names[::${STRIDE:-20}]"  # every 20th of the sorted mutant names
else
  modules="faceloss_jax/train_lib/objectives.py"
  tests="tests/test_configs.py
         tests/test_train_successors.py::test_state_is_updated_first_then_used
         tests/test_train.py::test_lambda_is_annealed_by_the_step"
  new_tests="tests/test_faults_training.py::test_config_objective_equals_the_library_called_by_hand"
  functions="x_compute_loss x_loss_kwargs x__contrastive_term x__center_term
             x__curricularface_before x__adaface_before x__adacos_before x_xbm x_elasticface
             x__lambda_at_step"
  prefix=faceloss_jax.train_lib.objectives
  sample="[n for n in names if int(n.rsplit('_', 1)[1]) % ${STRIDE:-6} == 1]"
fi
[ "$which" = after ] && tests="$tests $new_tests"

rm -rf "$workdir" && mkdir -p "$workdir"
(cd "$repo" && tar --exclude=.venv --exclude=.git --exclude=mutants --exclude='__pycache__' \
   --exclude=notebooks --exclude=experiments -cf - .) | tar -xf - -C "$workdir"
rm -f "$workdir/pyproject.toml"  # mutmut reads [tool.mutmut] there first; use setup.cfg
printf 'jax\nnumpy\nflax.linen\noptax\nml_collections\norbax.checkpoint\n' > "$workdir/preload.txt"
{
  echo "[mutmut]"
  echo "source_paths=faceloss_jax/"
  echo "only_mutate="; for m in $modules; do echo "    $m"; done
  echo "also_copy="; echo "    configs/"
  echo "pytest_add_cli_args_test_selection="; for t in $tests; do echo "    $t"; done
  echo "pytest_add_cli_args="; echo "    -p"; echo "    no:cacheprovider"; echo "    -x"; echo "    -m"; echo "    slow or not slow"
  echo "process_isolation=forkserver"  # JAX is not fork-safe once its backend is up
  echo "forkserver_warmup=import"
  echo "preload_modules_file=preload.txt"
  echo "use_git_change_detection=false"
} > "$workdir/setup.cfg"
cd "$workdir"
export JAX_PLATFORMS=cpu
# Generate the mutants, then run a deterministic sample of those of the listed functions
# (all of them with STRIDE=1).
"$python" -c "import mutmut.__main__ as m; m.create_mutants(2)" > /dev/null
"$python" - "$prefix" "$functions" > sample.txt <<PY
import glob, json, re, sys
prefix, functions = sys.argv[1], sys.argv[2].split()
names = []
for meta in glob.glob("mutants/faceloss_jax/**/*.py.meta", recursive=True):
    for key in json.load(open(meta))["exit_code_by_key"]:
        function = re.sub(r"__mutmut_\d+$", "", key[len(prefix) + 1:])
        if key.startswith(prefix + ".") and function in functions:
            names.append(key)
names.sort()
print("\n".join($sample))
PY
[ -n "${DRY_RUN:-}" ] && { wc -l < sample.txt; exit 0; }
# shellcheck disable=SC2046
"$python" -m mutmut run --max-children "${MAX_CHILDREN:-2}" $(cat sample.txt) || true
"$python" -m mutmut results --all true > results.txt 2>&1 || true
"$python" - <<'PY' | tee score.txt
import collections, re
counts = collections.defaultdict(collections.Counter)
for line in open("results.txt"):
    m = re.match(r"\s*faceloss_jax\.([\w.]+)\.x_.*?: ([\w ]+)$", line.rstrip())
    if m:
        counts[m.group(1)][m.group(2)] += 1
for module, c in sorted(counts.items()):
    total = sum(n for status, n in c.items() if status != "not checked")
    print(f"{module}: killed {c['killed']}/{total} = {c['killed'] / max(total, 1):.1%} {dict(c)}")
PY
