"""The benchmark runs end to end at a tiny size; it proves the bench works, not any figure."""
import json
import os
import subprocess
import sys

from conftest import PROJECT_DIR

SLOT = int(os.environ.get("RENTAHAL_TEST_SLOT", "0"))


def test_quick_bench_completes_and_ends_with_a_json_line_of_every_measurement():
    completed = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--database", f"test_rentahal_bench_{SLOT}",
         "--redis-db", str(15 - SLOT)],  # the slot's own Redis db, which every test flushes anyway
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {"machine", "direct", "websocket", "overhead", "streaming", "cost_growth", "v1", "in_flight",
            "idle_websockets", "selection", "targets"} <= results.keys()
    assert {"cores", "ram_gib", "python", "versions"} <= results["machine"].keys()
    for clients, level in results["websocket"].items():
        assert level["errors"] == 0
        assert level["stored_done"] == level["billed"] == level["requests"] == results["direct"][clients]["requests"]
    assert {"openai_16_tokens", "openai_200_tokens", "openai_200_tokens_at_5ms", "ollama_16_tokens"} <= results["streaming"].keys()
    for name, levels in results["streaming"].items():
        for clients, level in levels.items():
            direct, through = level["direct"], level["websocket"]
            assert direct["errors"] == through["errors"] == 0
            assert through["stored_done"] == through["billed"] == through["requests"] == direct["requests"]
            assert through["first_chunk_p50_ms"] is not None and direct["first_chunk_p50_ms"] is not None
            assert {"daphne", "worker0", "postgres", "redis"} <= through["cpu_ms_per_query"].keys()
            assert results["cost_growth"][name][clients] is not None
    for mode in ("plain", "stream"):
        assert results["v1"][mode]["errors"] == 0
        assert results["v1"][mode]["requests"] > 0
    assert results["in_flight"]["done"] == results["in_flight"]["jobs"]
    assert results["idle_websockets"]["opened"] == results["idle_websockets"]["sockets"]
