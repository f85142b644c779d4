"""Portrait Studio web UI: ``python app.py [--port P] [--models SET] [--listen] [--auth U:P]``.

:func:`build_demo` lays out the tabs (Profiles, Train, Generate, History) and wires the plain
handlers of :mod:`studio.webui` to them; :func:`main` serves it, on 127.0.0.1 unless
``--listen`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import gradio as gr

from studio import webui, webui_repair, webui_swap, webui_wplus
from studio.cli_common import setup_logging
from studio.errors import StudioError
from studio.limits import MAX_IDENTITY_SCALE, MAX_IMAGES, MAX_SEED
from studio.orchestrator import Studio
from studio.profiles.library import DATABASE_NAME
from studio.profiles.types import CONSENT_STATEMENT
from studio.settings import Settings, load_settings

GPU = {"concurrency_id": "gpu", "concurrency_limit": webui.GPU_CONCURRENCY}
"""Every generate and train event waits in this one queue."""
PRIVATE = {"api_visibility": "private"}
DEFAULT_STYLE = "studio-headshot"
PROFILE_MENUS = 3
"""Profile dropdowns on the Profiles, Train and Generate tabs, refreshed together."""


def _menus(studio: Studio, selected: str | None = None) -> tuple[gr.Dropdown, ...]:
    names = webui.profile_names(studio)
    return tuple(gr.Dropdown(choices=names, value=selected) for _ in range(PROFILE_MENUS))


def _profile_event(studio: Studio, handler: Callable[..., webui.ProfileView], *args: Any) -> tuple:
    """Run a Profiles handler; show its view and point every profile menu at its profile."""
    view = handler(studio, *args)
    remove = gr.Dropdown(choices=view.photos, value=[])
    return view.summary, view.rows, view.crops, remove, *_menus(studio, view.name)


def _selected_seed(seeds: list[int], evt: gr.SelectData) -> int:
    return webui.seed_at(seeds, evt.index)


def _selected_record(records: list[dict], evt: gr.SelectData) -> dict:
    return webui.history_details(records, evt.index)


def build_demo(studio: Studio, *, banner: str | None = None) -> gr.Blocks:
    """The studio's web UI on ``studio``; ``banner`` (markdown) is shown above the tabs."""
    jobs = webui.TrainingJobs(studio)
    names = webui.profile_names(studio)
    default_steps = int(studio.model_set.defaults.get("steps", 30))
    style_value = DEFAULT_STYLE if DEFAULT_STYLE in studio.styles else ""
    style_text, style_identity = webui.style_details(studio, style_value)
    train_default_steps, train_plan = webui.training_defaults(studio)

    with gr.Blocks(title="Portrait Studio", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# Portrait Studio\nModel set **{studio.model_set.name}**: {studio.model_set.title}"
        )
        if banner:
            gr.Markdown(banner, elem_id="banner")
        with gr.Tabs():
            with gr.Tab("Profiles", elem_id="tab-profiles"):
                gr.Markdown(
                    "A profile is a person's photos (5–20 sharp photos of one face, different "
                    "angles). Each photo gets a verdict; only accepted ones are used."
                )
                with gr.Row():
                    with gr.Column():
                        name = gr.Textbox(label="New profile name", elem_id="profile-name")
                        photos = gr.File(
                            label="Photos",
                            file_count="multiple",
                            file_types=["image"],
                            elem_id="profile-photos",
                        )
                        consent = gr.Checkbox(label=CONSENT_STATEMENT, elem_id="profile-consent")
                        create = gr.Button(
                            "Create profile", variant="primary", elem_id="profile-create"
                        )
                    with gr.Column():
                        pick = gr.Dropdown(
                            names,
                            value=None,
                            label="Profile",
                            allow_custom_value=True,
                            elem_id="profile-pick",
                        )
                        add = gr.Button("Add the uploaded photos", elem_id="profile-add")
                        remove_pick = gr.Dropdown(
                            [],
                            multiselect=True,
                            label="Photos to remove",
                            allow_custom_value=True,
                            elem_id="profile-remove-pick",
                        )
                        remove = gr.Button("Remove chosen photos", elem_id="profile-remove")
                        delete = gr.Button(
                            "Delete profile (photos, crops, LoRAs)",
                            variant="stop",
                            elem_id="profile-delete",
                        )
                summary = gr.Markdown(elem_id="profile-summary")
                verdicts = gr.Dataframe(
                    headers=webui.VERDICT_HEADERS,
                    datatype="str",
                    interactive=False,
                    label="Verdicts",
                    elem_id="profile-verdicts",
                )
                crops = gr.Gallery(
                    label="Accepted crops",
                    columns=6,
                    fit_columns=False,
                    height="auto",
                    elem_id="profile-crops",
                )

            with gr.Tab("Train", elem_id="tab-train"):
                gr.Markdown(
                    "Train an identity LoRA from the profile's accepted photos. Cancel keeps a "
                    "checkpoint; Resume continues the latest run up to the steps set here.\n\n"
                    + train_plan,
                    elem_id="train-plan",
                )
                with gr.Row():
                    train_profile = gr.Dropdown(
                        names,
                        value=None,
                        label="Profile",
                        allow_custom_value=True,
                        elem_id="train-profile",
                    )
                    train_steps = gr.Slider(
                        1,
                        3000,
                        value=train_default_steps,
                        step=1,
                        label="Steps",
                        elem_id="train-steps",
                    )
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="train-start")
                    resume = gr.Button("Resume", elem_id="train-resume")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                train_status = gr.Markdown(elem_id="train-status")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="step", y="loss", title="Loss", elem_id="train-loss")
                    similarity_plot = gr.LinePlot(
                        x="step",
                        y="similarity",
                        y_lim=[0, 1],
                        title="Identity similarity (validation)",
                        elem_id="train-similarity",
                    )
                timer = gr.Timer(1.0)

            with gr.Tab("Generate", elem_id="tab-generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        gen_profile = gr.Dropdown(
                            names,
                            value=None,
                            label="Profile",
                            allow_custom_value=True,
                            elem_id="gen-profile",
                        )
                        style = gr.Radio(
                            webui.style_choices(studio),
                            value=style_value,
                            label="Style",
                            elem_id="gen-style",
                        )
                        style_info = gr.Markdown(style_text, elem_id="gen-style-info")
                        prompt = gr.Textbox(
                            label="Prompt (alone, or added to the style)",
                            placeholder="{subject} as an astronaut, studio light",
                            lines=2,
                            elem_id="gen-prompt",
                        )
                        pose = gr.Image(
                            type="filepath",
                            label="Pose reference (optional): a photo whose head pose to copy",
                            sources=["upload", "clipboard"],
                            elem_id="gen-pose",
                        )
                        identity = gr.Slider(
                            0,
                            MAX_IDENTITY_SCALE,
                            value=style_identity,
                            step=0.05,
                            label="Identity strength",
                            elem_id="gen-identity",
                        )
                        number = gr.Slider(
                            1,
                            MAX_IMAGES,
                            value=1,
                            step=1,
                            label="Images",
                            elem_id="gen-number",
                        )
                        seed = gr.Number(
                            0,
                            precision=0,
                            minimum=0,
                            maximum=MAX_SEED,
                            label="Seed (click a result to reuse its seed)",
                            elem_id="gen-seed",
                        )
                        steps = gr.Slider(
                            1, 100, value=default_steps, step=1, label="Steps", elem_id="gen-steps"
                        )
                        repair = webui_repair.repair_controls()
                        wplus = webui_wplus.build_wplus_section(studio)
                        run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(
                            label="Results: identity similarity · seed, best first",
                            columns=4,
                            fit_columns=False,
                            object_fit="contain",
                            elem_id="gen-gallery",
                        )
                        notes = gr.Markdown(elem_id="gen-notes")
                        repair_report, foundations = webui_repair.repair_results()
                        files = gr.File(
                            label="Download",
                            file_count="multiple",
                            interactive=False,
                            elem_id="gen-files",
                        )
                seeds = gr.State([])

            webui_swap.build_swap_tab(studio, gpu=GPU)

            with gr.Tab("History", elem_id="tab-history") as history_tab:
                refresh = gr.Button("Refresh", elem_id="history-refresh")
                with gr.Row():
                    history_gallery = gr.Gallery(
                        label="Saved portraits, newest first",
                        columns=6,
                        fit_columns=False,
                        scale=2,
                        elem_id="history-gallery",
                    )
                    details = gr.JSON(label="Parameters", elem_id="history-details")
                records = gr.State([])

        # Profiles
        menus = [pick, train_profile, gen_profile]
        shown = [summary, verdicts, crops, remove_pick, *menus]
        for button, handler, inputs, api_name in (
            (create, webui.create_profile, [name, photos, consent], "create_profile"),
            (add, webui.add_photos, [pick, photos], "add_photos"),
            (remove, webui.remove_photos, [pick, remove_pick], "remove_photos"),
            (delete, webui.delete_profile, [pick], "delete_profile"),
        ):
            event = button.click(
                partial(_profile_event, studio, handler), inputs, shown, api_name=api_name
            )
            if button is create:  # the uploads and the consent are used up
                event.success(lambda: (None, False), None, [photos, consent], **PRIVATE)
            elif button is add:
                event.success(lambda: None, None, photos, **PRIVATE)
        pick.input(
            partial(_profile_event, studio, webui.show_profile),
            pick,
            shown,
            api_name="show_profile",
        )
        demo.load(partial(_menus, studio), None, menus, **PRIVATE)

        # Train
        train_outputs = [train_status, loss_plot, similarity_plot]
        start.click(
            partial(webui.start_training, jobs),
            [train_profile, train_steps],
            train_outputs,
            api_name="train_start",
            **GPU,
        )
        resume.click(
            partial(webui.resume_training, jobs),
            [train_profile, train_steps],
            train_outputs,
            api_name="train_resume",
            **GPU,
        )
        cancel.click(
            partial(webui.cancel_training, jobs),
            train_profile,
            train_outputs,
            api_name="train_cancel",
        )
        view = partial(webui.training_view, jobs)
        train_profile.change(view, train_profile, train_outputs, **PRIVATE)
        timer.tick(view, train_profile, train_outputs, show_progress="hidden", **PRIVATE)

        # Generate
        style.change(partial(webui.style_details, studio), style, [style_info, identity], **PRIVATE)
        show_history = partial(webui.history, studio)
        run.click(
            partial(webui_repair.generate, studio, wplus.names),
            [
                gen_profile,
                style,
                prompt,
                pose,
                identity,
                number,
                seed,
                steps,
                repair,
                *wplus.inputs,
            ],
            [gallery, files, seeds, notes, repair_report, foundations],
            api_name="generate",
            **GPU,
        ).success(show_history, None, [history_gallery, records], **PRIVATE)
        gallery.select(_selected_seed, seeds, seed, **PRIVATE)
        webui_wplus.wire(wplus, studio, gen_profile, GPU)

        # History
        refresh.click(show_history, None, [history_gallery, records], api_name="history")
        history_tab.select(show_history, None, [history_gallery, records], **PRIVATE)
        history_gallery.select(_selected_record, records, details, **PRIVATE)
    return demo.queue(max_size=webui.QUEUE_SIZE)


def parse_auth(value: str) -> tuple[str, str]:
    """``user:pass`` → ``(user, pass)``; the password may contain ':'."""
    user, sep, password = value.partition(":")
    if not (sep and user and password):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not user:pass; give both, e.g. --auth ada:long-secret"
        )
    return user, password


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument(
        "--models",
        default="auto",
        help="model set: auto (sd15 if its weights are local, else tiny), tiny, sd15, sdxl, "
        "or a diffusers folder",
    )
    parser.add_argument(
        "--listen", action="store_true", help="serve on every network interface, not 127.0.0.1"
    )
    parser.add_argument("--auth", type=parse_auth, metavar="USER:PASS", help="ask for this login")
    return parser.parse_args(argv)


def launch_options(
    settings: Settings,
    *,
    port: int | None = None,
    listen: bool = False,
    auth: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """``demo.launch`` arguments: loopback unless ``listen``, upload limit, served folders.

    Only the output and data folders are served (besides Gradio's own cache), never the
    profile database, which holds face embeddings.
    """
    database = settings.profiles_dir / DATABASE_NAME
    return {
        "server_name": "0.0.0.0" if listen else "127.0.0.1",
        "server_port": port,
        "auth": auth,
        "max_file_size": webui.UPLOAD_LIMIT,
        "allowed_paths": [str(settings.output_dir), str(settings.data_dir)],
        "blocked_paths": [f"{database}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(verbose=False)
    try:
        settings = load_settings()
        models, banner = webui.pick_models(settings, args.models)
        studio = Studio(settings, models)
    except StudioError as exc:
        sys.exit(f"error: {exc}")
    if args.listen and not args.auth:
        print(
            "warning: --listen without --auth lets anyone on the network use the studio "
            "and see its profiles; add --auth user:pass",
            file=sys.stderr,
        )
    build_demo(studio, banner=banner).launch(
        **launch_options(settings, port=args.port, listen=args.listen, auth=args.auth)
    )


if __name__ == "__main__":
    main()
