"""Offline sweeps: a real grid of protection trials on a shared photo, sampling, halving, bad files, resuming."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from facecloak.cli.main import main
from facecloak.errors import ConfigError
from facecloak.sweep.halving import successive_halving
from facecloak.sweep.results import TrialResult, apply_constraints, rank
from facecloak.sweep.runner import TRIAL_RECORD, run_sweep
from facecloak.sweep.spec import METRICS, HalvingSpec, SweepSpec, load_sweep, parse_sweep
from facecloak.sweep.trials import check_against_config, random_values
from test_protect import TINY

REPO = Path(__file__).resolve().parents[1]
SWEEP_DIR = REPO / "configs" / "sweep"
PHOTO = "jack_dorsey/img16.jpg"
GRID = {
    "name": "tiny_grid",
    "method": "grid",
    "metric": {"name": "held_out_similarity", "goal": "minimize"},
    "constraints": {"face_ssim": {"min": 0.5}},
    "photos": [PHOTO],
    "overrides": TINY,
    "parameters": {"search.lambda_adv": [0.3, 1.0], "search.lambda_latent": [0.0, 0.1]},
}


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grid(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("sweep")
    sweep_file = _write(folder / "tiny_grid.yaml", {**GRID, "photos_root": str(faces_dir)})
    out = folder / "out"
    code = main(["sweep", str(sweep_file), "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    return {"code": code, "file": sweep_file, "out": out, "results": results, "table": (out / "results.md").read_text()}


def test_grid_sweep_ranks_four_trials_by_the_metric(grid: dict[str, Any]) -> None:
    assert grid["code"] == 0
    trials = grid["results"]["trials"]
    assert len(trials) == 4 and [t["rank"] for t in trials] == [1, 2, 3, 4]
    assert {(t["values"]["search.lambda_adv"], t["values"]["search.lambda_latent"]) for t in trials} == {
        (0.3, 0.0),
        (0.3, 0.1),
        (1.0, 0.0),
        (1.0, 0.1),
    }
    for trial in trials:
        assert trial["status"] == "done" and trial["photos_done"] == 1 and trial["feasible"]
        assert set(trial["metrics"]) == set(METRICS)
        assert 0 <= trial["metrics"]["held_out_success"] <= 1 and 0 < trial["metrics"]["face_ssim"] <= 1
        assert math.isfinite(trial["metrics"]["face_psnr"]) and trial["metrics"]["seconds_per_photo"] > 0
        assert (Path(trial["folder"]) / TRIAL_RECORD).exists()
    similarities = [t["metrics"]["held_out_similarity"] for t in trials]
    assert similarities == sorted(similarities)  # minimised: best first
    assert grid["results"]["best"] == trials[0]["trial"]


def test_results_table_lists_every_trial(grid: dict[str, Any]) -> None:
    table = grid["table"]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 4
    assert "**held-out sim.**" in table and "search.lambda_adv" in table
    assert rows[0].startswith(f"| 1 | `{grid['results']['trials'][0]['trial']}`")


def test_rerun_skips_finished_trials(grid: dict[str, Any]) -> None:
    photos = [p for t in grid["results"]["trials"] for p in Path(t["folder"]).glob("*.png")]
    stamps = {p: p.stat().st_mtime_ns for p in photos}
    results = run_sweep(load_sweep(grid["file"]), grid["out"])
    assert [t["ran"] for t in results["trials"]] == [False] * 4
    assert [t["metrics"] for t in results["trials"]] == [t["metrics"] for t in grid["results"]["trials"]]
    assert stamps and all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())


def test_one_trial_as_wandb_agent_runs_it_reuses_the_same_folder(grid: dict[str, Any], capsys) -> None:
    # `wandb agent` passes the values as key=value; the same values give the same trial as the offline sweep.
    args = ["sweep", str(grid["file"]), "--trial", "--out", str(grid["out"])]
    assert main([*args, "search.lambda_adv=0.3", "search.lambda_latent=0.1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    [expected] = [
        t for t in grid["results"]["trials"] if t["values"] == {"search.lambda_adv": 0.3, "search.lambda_latent": 0.1}
    ]
    assert printed["trial"] == expected["trial"] and printed["metrics"] == expected["metrics"]


def test_trial_metrics_reach_the_wandb_run(grid: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    from facecloak.cli.sweep_cmd import log_trial_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    stored = json.loads((Path(grid["results"]["trials"][0]["folder"]) / TRIAL_RECORD).read_text())
    logged = log_trial_to_wandb(TrialResult(**stored), load_sweep(grid["file"]))
    assert logged["objective"] == stored["metrics"]["held_out_similarity"] and logged["feasible"] == 1.0
    assert set(METRICS) <= set(logged)
    # wandb-core writes the offline run as protobuf records; the logged keys and values are in it verbatim.
    [run_file] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    assert b"objective" in data and json.dumps(logged["objective"]).encode() in data
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.jpg"))  # no face images leave


def test_halving_reuses_finished_trials_and_runs_the_winner_at_a_larger_budget(
    grid: dict[str, Any], faces_dir: Path, tmp_path: Path
) -> None:
    # At the smallest budget (TINY's 3 steps) both configurations resolve to configs the grid already ran.
    raw = {
        **GRID,
        "method": "halving",
        "photos_root": str(faces_dir),
        "overrides": [*TINY, "search.lambda_latent=0.0"],
        "parameters": {"search.lambda_adv": [0.3, 1.0]},
        "halving": {"budget_key": "search.steps", "min_budget": 3, "max_budget": 6, "eta": 2},
    }
    results = run_sweep(load_sweep(_write(tmp_path / "halving.yaml", raw)), grid["out"])
    trials = results["trials"]
    assert [(t["budget"], t["ran"]) for t in trials] == [(6, True), (3, False), (3, False)]
    grid_trials = {t["trial"]: t for t in grid["results"]["trials"]}
    assert trials[1]["trial"] in grid_trials and trials[2]["trial"] in grid_trials
    assert trials[1]["metrics"]["held_out_similarity"] <= trials[2]["metrics"]["held_out_similarity"]
    assert trials[0]["values"] == trials[1]["values"]  # the better one at 3 steps went on to 6
    assert trials[0]["overrides"][-1] == "search.steps=6" and trials[0]["trial"] not in grid_trials


def _random(seed: int, n_trials: int = 6) -> SweepSpec:
    return parse_sweep(
        {
            "method": "random",
            "n_trials": n_trials,
            "seed": seed,
            "photos": [PHOTO],
            "parameters": {
                "search.lambda_adv": {"min": 0.1, "max": 2.0},
                "search.lr": {"min": 0.001, "max": 0.1, "distribution": "log_uniform_values"},
                "search.steps": {"min": 10, "max": 100, "distribution": "int_uniform"},
                "search.layers": [[0, 1], [2, 3]],
            },
        }
    )


def test_random_sampling_is_reproducible_by_seed() -> None:
    first, again, other = random_values(_random(0)), random_values(_random(0)), random_values(_random(1))
    assert first == again and first != other and len(first) == 6
    for values in first:
        assert 0.1 <= values["search.lambda_adv"] <= 2.0 and 0.001 <= values["search.lr"] <= 0.1
        assert isinstance(values["search.steps"], int) and 10 <= values["search.steps"] <= 100
        assert values["search.layers"] in ([0, 1], [2, 3])


def test_random_sampling_stops_at_the_size_of_a_small_space() -> None:
    spec = parse_sweep(
        {"method": "random", "n_trials": 10, "photos": [PHOTO], "parameters": {"search.lambda_adv": [0.5, 1.0]}}
    )
    assert sorted(v["search.lambda_adv"] for v in random_values(spec)) == [0.5, 1.0]


@pytest.mark.parametrize(
    ("spec", "budgets"),
    [
        ((25, 100, 2), [25, 50, 100]),
        ((1, 10, 3), [1, 3, 9, 10]),
        ((10, 30, 3), [10, 30]),
        ((5, 40, 2), [5, 10, 20, 40]),
    ],
)
def test_halving_budgets(spec: tuple[int, int, int], budgets: list[int]) -> None:
    assert HalvingSpec("search.steps", *spec).budgets() == budgets


def test_successive_halving_keeps_the_best_and_raises_the_budget() -> None:
    quality = [0.3, 0.9, 0.1, 0.7, 0.5, 0.8, 0.2, 0.6]  # config 1 best, then 5, 3, 7
    calls: list[tuple[int, int]] = []

    def objective(config: int, budget: int) -> tuple[float, ...]:
        calls.append((config, budget))
        return (quality[config] * (1 - 1 / budget),)  # more budget, better estimate of the same ranking

    rungs = successive_halving(len(quality), [25, 50, 100], 2, objective)
    assert [r.budget for r in rungs] == [25, 50, 100]
    assert [len(r.evaluated) for r in rungs] == [8, 4, 2]
    assert rungs[0].promoted == (1, 5, 3, 7) and rungs[1].promoted == (1, 5) and rungs[2].promoted == ()
    assert calls[:8] == [(c, 25) for c in range(8)] and calls[8:12] == [(c, 50) for c in (1, 5, 3, 7)]
    assert calls[12:] == [(1, 100), (5, 100)]


def test_successive_halving_keeps_one_and_ranks_infeasible_last() -> None:
    # Score tuples put feasibility first: config 0 has the best metric but breaks a constraint.
    scores = {0: (0.0, 0.99), 1: (1.0, 0.2), 2: (1.0, 0.4)}
    rungs = successive_halving(3, [1, 4, 16], 4, lambda c, b: scores[c])
    assert [r.evaluated for r in rungs] == [(0, 1, 2), (2,), (2,)]


def test_ranking_puts_feasible_first_and_breaks_ties() -> None:
    spec = parse_sweep(
        {
            **GRID,
            "metric": {"name": "held_out_success", "goal": "maximize", "tie_break": {"name": "held_out_similarity"}},
        }
    )

    def trial(index: int, success: float, similarity: float, ssim: float, status: str = "done") -> TrialResult:
        metrics = {"held_out_success": success, "held_out_similarity": similarity, "face_ssim": ssim}
        result = TrialResult(f"t{index}", index, {}, [], "", status, metrics if status == "done" else {})
        apply_constraints(result, spec)
        return result

    trials = [
        trial(0, 0.5, 0.95, 0.9),
        trial(1, 1.0, 0.80, 0.3),  # best metric, but breaks face_ssim >= 0.5
        trial(2, 0.5, 0.90, 0.9),  # ties trial 0 on success, closer to success on similarity
        trial(3, 0.0, 0.99, 0.9, status="failed"),
        trial(4, 0.0, 0.99, 0.9),
    ]
    assert [t.trial for t in rank(trials, spec)] == ["t2", "t0", "t4", "t1", "t3"]
    assert trials[1].violations == ["face_ssim 0.3 < 0.5"]


BAD = [
    ({"method": "bayes"}, "method"),
    ({"parameters": {"search.lambda_bogus": [0.1, 0.2]}}, "parameters.search.lambda_bogus"),
    ({"parameters": {"search.lambda_adv": []}}, "parameters.search.lambda_adv"),
    ({"parameters": {"search.lambda_adv": [0.5, -1.0]}}, "parameters.search.lambda_adv"),
    ({"parameters": {"search.lambda_adv": {"min": 0.1, "max": 1.0}}}, "parameters.search.lambda_adv"),
    ({"metric": {"name": "accuracy", "goal": "maximize"}}, "metric.name"),
    ({"constraints": {"face_ssmi": {"min": 0.9}}}, "constraints.face_ssmi"),
    ({"metric": {"name": "held_out_success", "tie_break": {"name": "speed"}}}, "metric.tie_break.name"),
    ({"trials": 4}, "trials"),
    (
        {"method": "halving", "halving": {"budget_key": "search.stepz", "min_budget": 2, "max_budget": 8}},
        "search.stepz",
    ),
    (
        {
            "method": "random",
            "n_trials": 2,
            "parameters": {"search.lr": {"min": -3, "max": -1, "distribution": "log_uniform"}},
        },
        "search.lr",
    ),
    ({"overrides": ["preset=nonexistent"]}, "preset"),
]


@pytest.mark.parametrize(("change", "key"), BAD, ids=[key for _, key in BAD])
def test_bad_sweep_file_names_the_key(faces_dir: Path, tmp_path: Path, change: dict[str, Any], key: str) -> None:
    path = _write(tmp_path / "bad.yaml", {**GRID, "photos_root": str(faces_dir), **change})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        spec = load_sweep(path)
        check_against_config(spec, spec.overrides)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.parametrize("path", sorted(p for p in SWEEP_DIR.glob("*.yaml") if not p.name.endswith(".wandb.yaml")))
def test_shipped_sweeps_are_valid(path: Path, faces_dir: Path) -> None:
    spec = load_sweep(path)
    check_against_config(spec, spec.overrides)
    assert spec.resolved_photos()


def test_wandb_sweep_file_matches_the_offline_one() -> None:
    offline = yaml.safe_load((SWEEP_DIR / "loss_weights.yaml").read_text())
    wandb_sweep = yaml.safe_load((SWEEP_DIR / "loss_weights.wandb.yaml").read_text())
    as_wandb = {k: {"values": v} if isinstance(v, list) else v for k, v in offline["parameters"].items()}
    assert wandb_sweep["parameters"] == as_wandb
    assert wandb_sweep["method"] == offline["method"] and wandb_sweep["run_cap"] == offline["n_trials"]
    command = wandb_sweep["command"]
    assert command[-1] == "${args_no_hyphens}" and "--trial" in command and "configs/sweep/loss_weights.yaml" in command
    assert wandb_sweep["metric"] == {"name": "objective", "goal": offline["metric"]["goal"]}
    assert os.path.exists(REPO / wandb_sweep["program"])
