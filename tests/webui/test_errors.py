"""The web UI tells user mistakes from bugs: the first as ``gr.Error`` with the fix, the second
logged with its traceback and shown as one generic message that leaks nothing."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import gradio as gr
import pytest

from studio import webui
from studio.errors import StudioError
from studio.orchestrator import Studio


def _bug(*args, **kwargs):
    raise ValueError("internal detail: list index 7 of /srv/secret")


def test_a_bug_is_logged_with_its_traceback_and_shown_generically(ui_settings, ada, caplog):
    studio = Studio(ui_settings, "tiny")
    studio.generate = _bug  # a programming error inside the studio, raised as a plain ValueError
    with caplog.at_level(logging.ERROR, logger="studio.webui"), pytest.raises(gr.Error) as error:
        webui.generate(studio, ada, "film-noir", "", None, 1.0, 1, 0, 2)
    assert error.value.message == webui.INTERNAL_ERROR
    assert "secret" not in error.value.message
    (record,) = caplog.records
    assert record.exc_info and record.exc_info[0] is ValueError
    assert "internal detail" in caplog.text and "Traceback" in caplog.text


def test_a_bad_adapter_checkpoint_is_a_user_error_naming_the_file(ui_settings, ada, tmp_path):
    bad = tmp_path / "faceid.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    studio = Studio(replace(ui_settings, weights={"faceid": bad}), "tiny")
    with pytest.raises(gr.Error, match=r"faceid\.safetensors is not a readable \.safetensors"):
        webui.generate(studio, ada, "film-noir", "", None, 1.0, 1, 0, 2)


@pytest.mark.parametrize(
    ("failure", "shown", "logged"),
    [
        (StudioError("the GPU is busy; wait"), "the GPU is busy; wait", False),
        (KeyError("step"), webui.INTERNAL_ERROR, True),
    ],
)
def test_background_training_reports_user_errors_and_logs_bugs(
    ui_settings, ada, caplog, failure, shown, logged
):
    studio = Studio(ui_settings, "tiny")

    def train(*args, **kwargs):
        raise failure

    studio.train = train
    jobs = webui.TrainingJobs(studio)
    with caplog.at_level(logging.ERROR, logger="studio.webui"):
        job = jobs.start(ada, 2)
        deadline = time.monotonic() + 30
        while job.running and time.monotonic() < deadline:
            time.sleep(0.01)
    assert job.error == shown
    assert f"failed: {shown}" in webui.training_view(jobs, ada)[0]
    assert bool(caplog.records) is logged
