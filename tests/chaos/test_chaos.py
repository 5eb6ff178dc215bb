"""The short chaos run (README, "Chaos suite"): a few hundred queries from many users over /ws
while a realm worker is SIGKILLed, Redis and Postgres restart, a shard moves and one user
floods, on a Postgres cluster and a Redis of the run's own. Every promise of the query path
holds afterwards: each acked query ended done or failed with a reason and its user learned
how, once; one charge per done query and none on failed ones; the money adds up everywhere;
nobody saw another's query; none waited past the documented bound."""
import json
import subprocess
import sys

from conftest import PROJECT_DIR
from tests.chaos.faults import KINDS

SHORT_RUN = ["--seed", "1", "--queries", "250", "--users", "16", "--duration", "45"]


def test_a_short_chaos_run_keeps_every_promise_of_the_query_path(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tests.chaos", *SHORT_RUN, "--run-dir", str(tmp_path)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900,
    )
    assert (tmp_path / "summary.json").exists(), run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())

    assert summary["violations"] == [], run.stdout[-4000:]
    assert run.returncode == 0
    assert summary["submitted"] == summary["acked"] == summary["queries_planned"] == 250
    assert summary["done"] + summary["failed"] == summary["rows"] == 250
    assert sorted(summary["fault_counts"]) == sorted(KINDS)
    assert [fault for fault in summary["faults"] if fault["error"]] == []
