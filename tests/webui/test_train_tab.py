"""The Train tab sizes a default run for the machine and shows progress with the time left."""

from __future__ import annotations

import re
import time

import pytest

from studio import webui


def test_the_train_tab_says_what_a_default_run_is_before_it_starts(studio):
    steps, plan = webui.training_defaults(studio)
    assert steps == 100
    assert "the tiny set (random weights): 64 px, 100 steps" in plan
    assert "time left shows beside the progress bar" in plan


@pytest.mark.slow
def test_a_running_job_shows_a_progress_bar_and_the_time_left(studio, ada):
    jobs = webui.TrainingJobs(studio, validate_every=0)
    webui.start_training(jobs, ada, 3000)
    deadline = time.monotonic() + 180
    while len(jobs.get(ada).progress) < 2:
        assert jobs.get(ada).running and time.monotonic() < deadline
        time.sleep(0.05)
    status = webui.training_view(jobs, ada)[0]
    webui.cancel_training(jobs, ada)
    assert status.startswith(f"Training **{ada}**: step ")
    assert re.search(r"`[█░]{24} \d+%` · about \d+ (s|min) left", status), status
    jobs.get(ada).thread.join(120)
    assert jobs.get(ada).result.status == "interrupted"
