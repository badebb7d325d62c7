"""`--launcher slurm` against a real Slurm: Debian's slurmctld + slurmd on this machine, started by
.ci/slurm-up (CI installs the packages; without them these tests are skipped and say how to get them).

A toy degradation grid (two cells) trained as Slurm jobs must give the same numbers as the same grid
trained here; a rerun after the submitting process died and one job was cancelled submits only that
cell; a request Slurm cannot meet is one line before anything is submitted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reslab.studies.slurm import SlurmOptions, _sbatch_flags

ROOT = Path(__file__).resolve().parents[2]
TOY = ["degradation", "--depths", "2", "--seeds", "0", "--width", "16", "--eval-every", "15"]


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed: apt-get install slurmctld slurmd slurm-client munge")
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("Slurm is installed but not running, and starting it needs root")
        subprocess.run([ROOT / ".ci" / "slurm-up"], check=True, timeout=120)


def reslab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "reslab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def rows(study: Path) -> dict[str, tuple[float, float]]:
    """Every run's final train and test error, read from its own summary.json."""
    out = {}
    for s in sorted((study / "runs").glob("*/summary.json")):
        d = json.loads(s.read_text())
        out[s.parent.name] = (d["final_train_error"], d["final_test_error"])
    return out


def test_resources_follow_the_kind_of_net_and_bad_values_are_refused():
    assert _sbatch_flags(SlurmOptions(launcher="slurm"), mlp=True) == {
        "time": "60",
        "cpus_per_task": "1",
    }
    conv = _sbatch_flags(SlurmOptions(launcher="slurm", slurm_partition="gpu"), mlp=False)
    assert conv == {"time": "1440", "cpus_per_task": "8", "partition": "gpu", "gpus_per_node": "1"}
    with pytest.raises(ValueError, match="--launcher must be local or slurm"):
        SlurmOptions(launcher="kubernetes")
    with pytest.raises(ValueError, match="--slurm-gpus must be between"):
        SlurmOptions(launcher="slurm", slurm_gpus=-1)


@pytest.mark.slow
def test_a_grid_on_slurm_gives_the_numbers_of_the_same_grid_trained_here(slurm, tmp_path):
    # two cells at a time here, one thread each: what each Slurm job (one CPU) computes with
    local = reslab(*TOY, "--iters", "30", "--jobs", "2", "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    on_slurm = reslab(
        *TOY, "--iters", "30", "--out", str(tmp_path / "slurm"), "--launcher", "slurm",
        "--slurm-poll", "0.5",
    )  # fmt: skip
    assert on_slurm.returncode == 0, on_slurm.stderr
    assert "submitted 2 jobs to Slurm" in on_slurm.stdout
    study = tmp_path / "slurm" / "digits"
    jobs = json.loads((study / "slurm" / "jobs.json").read_text())
    assert sorted(jobs) == ["plain-2-s0", "residual-2-s0"]
    assert rows(study) == rows(tmp_path / "local" / "digits") and len(rows(study)) == 2
    assert (study / "report.html").is_file()
    # the same command again: everything is finished, nothing is submitted
    again = reslab(*TOY, "--iters", "30", "--out", str(tmp_path / "slurm"), "--launcher", "slurm")
    assert again.returncode == 0 and "submitted" not in again.stdout


@pytest.mark.slow
def test_a_rerun_after_the_submitter_died_submits_only_the_cancelled_cell(slurm, tmp_path):
    args = [*TOY, "--iters", "400", "--out", str(tmp_path), "--launcher", "slurm"]
    submitter = subprocess.Popen(
        [sys.executable, "-m", "reslab", *args, "--slurm-poll", "0.5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs_file = tmp_path / "digits" / "slurm" / "jobs.json"
    for _ in range(600):
        if jobs_file.is_file():
            break
        time.sleep(0.1)
    jobs = json.loads(jobs_file.read_text())
    submitter.send_signal(signal.SIGKILL)  # what the OOM killer or a closed login session does
    submitter.wait()
    subprocess.run(["scancel", jobs["residual-2-s0"]], check=True)
    rerun = reslab(*args, "--slurm-poll", "0.5")
    assert rerun.returncode == 0, rerun.stderr
    assert "submitted 1 jobs to Slurm" in rerun.stdout
    new = json.loads(jobs_file.read_text())
    assert new["plain-2-s0"] == jobs["plain-2-s0"]  # still queued or done: not submitted twice
    assert new["residual-2-s0"] != jobs["residual-2-s0"]
    assert sorted(rows(tmp_path / "digits")) == ["plain-2-s0", "residual-2-s0"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag, value",
    [("--slurm-partition", "nowhere"), ("--slurm-gpus", "8")],
    ids=["partition", "gpus"],
)
def test_a_request_slurm_cannot_meet_is_one_line_and_submits_nothing(slurm, tmp_path, flag, value):
    queued = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    r = reslab(*TOY, "--iters", "30", "--out", str(tmp_path), "--launcher", "slurm", flag, value)
    assert r.returncode == 2
    assert r.stderr.startswith("reslab degradation: error: --launcher slurm: Slurm refuses")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "digits").exists()  # the refused study leaves no folder
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == queued


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(slurm, tmp_path):
    args = [
        "--archs",
        "plain",
        "--iters",
        "5000",
        "--eval-every",
        "250",
        "--checkpoint-every",
        "250",
    ]
    submitter = subprocess.Popen(
        [sys.executable, "-m", "reslab", *TOY, *args, "--out", str(tmp_path), "--launcher", "slurm",
         "--slurm-poll", "0.5"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    run = tmp_path / "digits" / "runs" / "plain-2-s0"
    for _ in range(1200):  # until the run has a checkpoint to resume from
        if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
            break
        time.sleep(0.1)
    job = json.loads((tmp_path / "digits" / "slurm" / "jobs.json").read_text())["plain-2-s0"]
    # what Slurm sends before it preempts a job or stops it at its time limit (--signal=USR2@90)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    for _ in range(100):  # submitit requeues it; Slurm holds a requeued job ~2 min: release it now
        state = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True
        )
        if "BeginTime" in state.stdout:
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
            break
        time.sleep(0.1)
    out, _ = submitter.communicate(timeout=300)
    assert submitter.returncode == 0, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 5000
    assert summary["resumed_from"].startswith("step-")  # it did not start again from step 0
