"""`--launcher slurm` against a real Slurm: Debian's slurmctld + slurmd on this machine, started by
.ci/slurm-up (CI installs the packages; without them these tests are skipped and say how to get them).

A toy degradation grid (two cells) trained as Slurm jobs must give the same numbers as the same grid
trained here; a cancelled job's cell is reported as a failed run (the report built, exit 1) and the
next run of the command submits only that cell, also after the submitting process died; a cell of two
processes trains as the same cell under torchrun does; a request Slurm cannot meet is one line before
anything is submitted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reslab.launch.slurm import SlurmOptions, _log_tail, _queue, _sbatch_flags

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
    # two GPUs: one process each (the paper's batch norm over half the batch); or procs on CPUs
    two = _sbatch_flags(SlurmOptions(launcher="slurm", slurm_gpus=2), mlp=False)
    assert two["gpus_per_node"] == "2" and two["ntasks_per_node"] == "2"
    cpus = _sbatch_flags(SlurmOptions(launcher="slurm", slurm_procs=2), mlp=True)
    assert cpus == {"time": "60", "cpus_per_task": "1", "ntasks_per_node": "2"}
    with pytest.raises(ValueError, match="--slurm-procs must be at least 1"):
        SlurmOptions(launcher="slurm", slurm_procs=0)
    with pytest.raises(ValueError, match="--slurm-procs 2 needs a GPU per process"):
        _sbatch_flags(SlurmOptions(launcher="slurm", slurm_procs=2, slurm_gpus=1), mlp=False)
    with pytest.raises(ValueError, match="--launcher must be local or slurm"):
        SlurmOptions(launcher="kubernetes")
    with pytest.raises(ValueError, match="--slurm-gpus must be between"):
        SlurmOptions(launcher="slurm", slurm_gpus=-1)


@pytest.mark.parametrize(
    "log, why",
    [
        (
            "submitit ERROR - Submitted job triggered an exception\nTraceback (most recent call "
            'last):\n  File "x.py", line 3, in f\nFileNotFoundError: no cifar-10-batches-py in '
            "/data\nsrun: error: node1: task 0: Exited with exit code 1\n",
            "FileNotFoundError: no cifar-10-batches-py in /data",
        ),
        (
            "step 100\nslurmstepd: error: *** JOB 7 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE "
            "TO TIME LIMIT ***\n",
            "slurmstepd: error: *** JOB 7 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME "
            "LIMIT ***",
        ),
        ("step 100\nstep 200\n", None),  # no line says why: the caller shows the last one
    ],
    ids=["exception", "time-limit", "none"],
)
def test_a_failed_job_is_explained_by_the_line_of_its_log_that_says_why(tmp_path, log, why):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "7_0_log.err").write_text(log)
    tail, path, found = _log_tail(tmp_path, "7")
    assert found == why and path == tmp_path / "7" / "7_0_log.err"
    assert tail == [line.strip() for line in log.splitlines() if line.strip()][-3:]
    assert _log_tail(tmp_path, "8")[::2] == ([], None)  # a job that never started has no log


def test_a_job_squeue_calls_invalid_has_ended_and_an_unanswered_squeue_ends_none(
    slurm, tmp_path, monkeypatch
):
    assert _queue(["999999"]) == {}  # "Invalid job id specified": Slurm holds no such job
    # squeue that cannot answer (here it cannot read its configuration) tells nothing about the
    # jobs: None, and the waiting submitter takes no job for ended (a requeue once looked so)
    (tmp_path / "slurm.conf").write_text("")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    assert _queue(["999999"]) is None


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


def wait_for(what, timeout: float = 300):
    """`what()` once it is true, polling; fails the test after `timeout` seconds."""
    deadline = time.time() + timeout
    while not (value := what()):
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
    return value


def jobs_of(study: Path) -> dict:
    path = study / "slurm" / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.mark.slow
def test_a_failed_job_is_a_failed_run_and_only_its_cell_is_submitted_again(slurm, tmp_path):
    args = [*TOY, "--iters", "400", "--out", str(tmp_path), "--launcher", "slurm"]
    cmd = [sys.executable, "-m", "reslab", *args, "--slurm-poll", "0.5"]
    study = tmp_path / "digits"
    submitter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jobs = wait_for(lambda: jobs_of(study))
    subprocess.run(["scancel", jobs["residual-2-s0"]], check=True)  # the other cell goes on
    out, err = submitter.communicate(timeout=300)
    # the report is built, counting the failed cell against its arm; then exit 1, in one line
    assert submitter.returncode == 1, err
    assert err.startswith("reslab degradation: error: 1 of 2 cells failed on Slurm (residual-2-s0")
    assert len(err.strip().splitlines()) == 1 and "rerun the same command" in err
    assert f"residual-2-s0: Slurm job {jobs['residual-2-s0']} ended without" in out
    run = json.loads((study / "runs" / "residual-2-s0" / "summary.json").read_text())
    assert run["status"] == "failed"
    assert run["error"].startswith(f"Slurm job {jobs['residual-2-s0']}: ")
    summary = json.loads((study / "summary.json").read_text())
    assert {r["run_dir"]: r["status"] for r in summary["runs"]} == {
        "runs/plain-2-s0": "completed",
        "runs/residual-2-s0": "failed",
    }
    assert summary["verdict"]["failed"] == ["runs/residual-2-s0"]  # scored as a diverged run is
    assert (study / "report.html").is_file()
    # the same command again submits only the failed cell; its submitter dies at once (what the
    # OOM killer or a closed login session does) and a third finds that job instead of submitting
    rerun = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: jobs_of(study)["residual-2-s0"] != jobs["residual-2-s0"])
    rerun.send_signal(signal.SIGKILL)
    rerun.wait()
    new = jobs_of(study)
    assert new["plain-2-s0"] == jobs["plain-2-s0"]  # finished: not submitted twice
    last = reslab(*args, "--slurm-poll", "0.5")
    assert last.returncode == 0, last.stderr
    assert "submitted" not in last.stdout and jobs_of(study) == new
    run = json.loads((study / "runs" / "residual-2-s0" / "summary.json").read_text())
    assert run["status"] == "completed" and run["steps"] == 400
    assert sorted(rows(study)) == ["plain-2-s0", "residual-2-s0"]


@pytest.mark.slow
def test_a_cell_of_two_processes_trains_as_the_same_cell_under_torchrun(slurm, tmp_path):
    args = [
        *TOY,
        "--archs",
        "plain",
        "--iters",
        "30",
        "--out",
        str(tmp_path),
        "--launcher",
        "slurm",
    ]
    on_slurm = reslab(*args, "--slurm-procs", "2", "--slurm-poll", "0.5")
    assert on_slurm.returncode == 0, on_slurm.stderr
    run = tmp_path / "digits" / "runs" / "plain-2-s0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2  # one gloo process group of the job's two Slurm tasks
    # the same cell by torchrun here, from the run's own config
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ref = subprocess.run(
        [sys.executable, *torchrun, "-m", "reslab", "train", "--config", str(run / "config.json"),
         "--out", str(tmp_path / "ref"), "--name", "ref", "--no-resume"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = json.loads((tmp_path / "ref" / "ref" / "summary.json").read_text())
    keys = ("world_size", "steps", "final_train_error", "final_test_error", "final_train_loss")
    assert {k: summary[k] for k in keys} == {k: expected[k] for k in keys}
    # written once, by rank 0: every logged line as torchrun's run logged it, none twice
    assert metrics(run) == metrics(tmp_path / "ref" / "ref")


def metrics(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in ("time", "images_per_s")} for x in lines]


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
