"""Every ablation in experiments/ runs end to end at its smoke scale (tiny models) through lm.sweep, and writes
its table and plots."""
import pytest

from tests.test_sweep import results, run_sweep


@pytest.mark.parametrize("experiment", ["lr_width", "compression_steps", "damage", "pg_recipe", "speedrun_150"])
def test_each_ablation_runs_end_to_end_at_smoke_scale(tmp_path, shakespeare, experiment):
  r = run_sweep(f"experiments/{experiment}.py", tmp_path, "--scale=smoke")
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
  folder = tmp_path / f"{experiment}-smoke"
  rows = results(tmp_path, f"{experiment}-smoke")
  assert rows and all(row["status"] == "done" for row in rows), rows
  assert (folder / "results.md").exists() and list((folder / "plots").glob("*.png"))
