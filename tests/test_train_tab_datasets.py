"""The Train tab's dataset list: one list (studio.dataset.store.list_datasets), read again on
every page load and whenever the Train tab is opened, so a dataset saved in the Dataset tab
appears there without restarting the app (issue 10)."""

from __future__ import annotations

from pathlib import Path

from _train_support import CAPTIONS, make_dataset


def _staged(ws) -> Path:
    """A processed dataset waiting in the staging area, as the Dataset tab's Process leaves it."""
    return make_dataset(ws.tmp_dir / "staging" / "abc123")


def _save_in_dataset_tab(ctx, staged: Path, name: str) -> str:
    from studio.ui import dataset_tab

    rows = [[f"{i:04d}.png", "", CAPTIONS[i], True] for i in range(4)]
    current, _, status = dataset_tab.save(ctx, str(staged), name, rows)
    assert status.startswith("✅"), status
    return current


def _train_dataset_refreshers(demo) -> dict[str, object]:
    """{event name: function} of the listeners that rewrite the Train tab's dataset dropdown."""
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) ==
                    "train-dataset")
    out = {}
    for fn in demo.fns.values():
        if any(o._id == dropdown._id for o in fn.outputs):
            for _, event in fn.targets:
                out[event] = fn.fn
    return out


def test_a_dataset_saved_in_the_dataset_tab_is_in_the_train_list(workspace):
    from studio.ui.context import AppContext
    from studio.ui.train_view import dataset_choices

    ctx = AppContext(workspace=workspace)
    assert dataset_choices(ctx) == []
    saved = _save_in_dataset_tab(ctx, _staged(workspace), "mine")
    assert Path(saved) == workspace.datasets_dir / "mine"
    assert dataset_choices(ctx) == [("mine (4 images)", saved)]

    # A dataset folder nobody registered (copied in, made by the CLI) is in the same list.
    other = make_dataset(workspace.datasets_dir / "copied")
    assert [p for _, p in dataset_choices(ctx)].count(str(other)) == 1


def test_the_train_list_is_read_again_on_page_load_and_when_the_tab_opens(workspace):
    from studio.ui.app import build_app
    from studio.ui.context import AppContext

    ctx = AppContext(workspace=workspace)
    demo = build_app(ctx)
    refreshers = _train_dataset_refreshers(demo)
    assert {"load", "select"} <= set(refreshers), refreshers
    saved = _save_in_dataset_tab(ctx, _staged(workspace), "later")  # after the app was built
    for event in ("load", "select"):
        update = refreshers[event]()
        assert ("later (4 images)", saved) in update["choices"], (event, update)
