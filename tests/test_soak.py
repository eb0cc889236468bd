"""A short soak (bench/soak.py): the three compiled helpers against one daemon,
concurrently, every answer checked against the DB. The long run is the bench."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "soak", Path(__file__).resolve().parent.parent / "bench" / "soak.py")
soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak)


def test_short_soak_has_no_wrong_answer(db, sandbox):
    soak.load(db, str(sandbox), 40)
    result = soak.soak(sandbox, seconds=6, clients=3, users=40)
    assert result["errors"] == 0, result["first_errors"]
    assert result["getpw"] > 0 and result["local"] > 0 and result["checkpassword"] > 0
