"""Every user mistake is one line ``error: ...`` on stderr and exit status 2, found before any work
where it can be; checkpoints are never torn."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader, Dataset

from conftest import REPO_ROOT, common, run_infer, run_script, tiny_overrides, write_toy_dataset
from hdmap_seg.callbacks import AtomicCheckpointIO
from hdmap_seg.checks import check_instantiated_groups, check_output_dir, check_window
from hdmap_seg.data.datamodule import SegDataModule
from hdmap_seg.errors import USER_ERROR_EXIT, HdmapError, exit_on_user_error
from hdmap_seg.module import read_checkpoint

CONF = REPO_ROOT / "conf"


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, and the last line of stderr is ``error: ...`` with ``fragments``."""
    assert proc.returncode == USER_ERROR_EXIT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, last
    return last


def run_decorated(fn, capsys) -> str:
    """Run ``fn`` through :func:`exit_on_user_error`; the one line it printed."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(fn)()
    assert exit_info.value.code == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


def truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def as_jpeg(png: Path) -> Path:
    """Replace a frame ``.png`` by the same frame as ``.jpg``."""
    jpg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    png.unlink()
    return jpg


def edited_checkpoint(source: Path, dest: Path, edit) -> Path:
    ckpt = torch.load(source, weights_only=True, map_location="cpu")
    edit(ckpt)
    torch.save(ckpt, dest)
    return dest


# -------------------------------------------------------------------- 1. Hydra's instantiate wraps


def test_hdmap_error_inside_instantiate_is_unwrapped(capsys):
    node = {
        "_target_": "hdmap_seg.io.read_yaml_mapping",
        "path": "/nonexistent/x.yaml",
        "what": "a test file",
    }
    line = run_decorated(lambda: instantiate(node), capsys)
    assert line == "error: /nonexistent/x.yaml: a test file not found"


def test_a_bug_while_handling_a_user_error_stays_a_bug(capsys):
    def buggy():
        try:
            raise HdmapError("the user's mistake")
        except HdmapError:
            return {}["a bug in the handler"]

    with pytest.raises(KeyError):
        exit_on_user_error(buggy)()


def test_train_with_missing_model_weights(toy_dataset, tmp_path):
    missing = tmp_path / "nope.pth"
    proc = run_script("train.py", *tiny_overrides(toy_dataset, tmp_path), f"model.weights={missing}")
    assert_one_line_error(proc, f"{missing}: weights file not found")


# -------------------------------------------------------------------- 2. DataLoader workers


class _FailsAtThree(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> int:
        if index == 3:
            raise HdmapError("/data/frame3.png: cannot be read as an image")
        return index


def test_a_worker_error_is_the_original_line(capsys):
    line = run_decorated(lambda: list(DataLoader(_FailsAtThree(), batch_size=None, num_workers=2)), capsys)
    assert line == "error: /data/frame3.png: cannot be read as an image"


def test_a_worker_error_that_torch_could_not_rebuild_is_the_original_line(capsys):
    """torch re-raises as RuntimeError when the original type cannot take one argument."""
    message = (
        "Caught HdmapError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nhdmap_seg.errors.HdmapError: /data/f.png: cannot be read as an image\n'
    )

    def fails():
        raise RuntimeError(message)

    assert run_decorated(fails, capsys) == "error: /data/f.png: cannot be read as an image"


def test_infer_with_a_truncated_frame_read_by_two_workers(checkpoint, drive_log, tmp_path):
    log = shutil.copytree(drive_log, tmp_path / drive_log.name)
    frame = truncate(sorted((log / "image_02/data").glob("*.png"))[3])
    proc = run_infer(*common(checkpoint, log, tmp_path / "out"), "num_workers=2")
    assert_one_line_error(proc, f"{frame}: cannot be read as an image")


# -------------------------------------------------------------------- 3. a full disk anywhere


@pytest.mark.parametrize(
    "code, what", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "disk quota exceeded")]
)
def test_full_disk_names_the_file_and_the_free_space(code, what, tmp_path, capsys):
    target = tmp_path / "csv" / "metrics.csv"

    def write():
        raise OSError(code, "No space left on device", str(target))

    line = run_decorated(write, capsys)
    assert line.startswith(f"error: {target}: {what}") and "free on its file system" in line


def test_full_disk_without_a_file_name_and_wrapped(capsys):
    def write():
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("saving failed") from err

    assert "no space left on the device (No space left on device)" in run_decorated(write, capsys)


# -------------------------------------------------------------------- 4. output folders that are files


def test_train_run_dir_that_is_a_file(toy_dataset, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run_script("train.py", *tiny_overrides(toy_dataset, tmp_path), f"hydra.run.dir={afile}")
    assert_one_line_error(proc, f"hydra.run.dir={afile}: it is a file, not a folder")


def test_infer_out_dir_that_is_a_file(checkpoint, drive_log, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run_infer(*common(checkpoint, drive_log, tmp_path / "out"), f"out_dir={afile}")
    assert_one_line_error(proc, f"out_dir={afile}: it is a file, not a folder")


def test_eval_out_dir_under_a_file(checkpoint, toy_dataset, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run_script(
        "eval.py",
        f"ckpt_path={checkpoint}",
        f"data.root={toy_dataset}",
        f"out_dir={afile}/eval",
        f"hydra.run.dir={tmp_path}/hydra",
        "trainer.accelerator=cpu",
        "num_workers=0",
    )
    assert_one_line_error(proc, f"out_dir={afile}/eval: {afile} is a file, not a folder")


def test_output_dir_check(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper", "out_dir")  # folders to make: fine
    check_output_dir(tmp_path, "out_dir")
    (tmp_path / "f").write_text("")
    with pytest.raises(HdmapError, match=r"out_dir=.*/f/x/y: .*/f is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "x" / "y", "out_dir")


# -------------------------------------------------------------------- 5. a checkpoint of another model


def test_infer_with_a_checkpoint_whose_weights_do_not_fit_its_model_config(checkpoint, drive_log, tmp_path):
    def widen(ckpt):
        ckpt["hyper_parameters"]["model_config"]["backbone_kwargs"]["embed_dims"] = [24, 32, 48, 64]

    ckpt = edited_checkpoint(checkpoint, tmp_path / "other.ckpt", widen)
    proc = run_infer(*common(ckpt, drive_log, tmp_path / "out"))
    assert_one_line_error(
        proc,
        f"{ckpt}: its weights do not fit the model of its own model_config",
        "differ in shape (backbone.encoder.model.patch_embeds.0.proj.weight is (16, 3, 4, 4) there but "
        "(24, 3, 4, 4) here",
    )


def test_resume_from_a_checkpoint_of_another_model_config(checkpoint, toy_dataset, tmp_path):
    # `checkpoint` is TINY_TWINS (embed dims 16..64, head 32); model=twins_svt_tiny is 32..256, head 64.
    proc = run_script("train.py", *tiny_overrides(toy_dataset, tmp_path), f"ckpt_path={checkpoint}")
    assert_one_line_error(
        proc,
        f"{checkpoint}: cannot resume: it was trained with another model config",
        "(backbone_kwargs.embed_dims: [16, 32, 48, 64] there, [32, 64, 128, 256] here; ",
        "parameters differ in shape (model.backbone.encoder.model.patch_embeds.0.proj.weight is (16, 3, 4, 4) "
        "there but (32, 3, 4, 4) here, ",
    )


def test_resume_from_a_missing_checkpoint(toy_dataset, tmp_path):
    from hdmap_seg.module import check_resume

    with pytest.raises(HdmapError, match=r"ckpt_path=.*gone.ckpt: checkpoint not found"):
        check_resume(tmp_path / "gone.ckpt", torch.nn.Linear(1, 1), {})


# -------------------------------------------------------------------- 6. wrong types of trainer options


def test_train_with_a_trainer_option_of_the_wrong_type(toy_dataset, tmp_path):
    proc = run_script("train.py", *tiny_overrides(toy_dataset, tmp_path), "trainer.max_steps=abc")
    assert_one_line_error(proc, "trainer.max_steps='abc': lightning.Trainer expects int")


def compose_with_paths(config_name: str, overrides: list[str], tmp_path: Path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)  # Hydra sets it inside a real run
    return cfg


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "overrides",
    [[f"trainer={t}"] for t in _options("trainer")]
    + [[f"logger={lg}"] for lg in _options("logger")]
    + [[f"experiment={e}"] for e in _options("experiment")]
    + [["trainer.devices=[0]", "trainer.precision=16", "trainer.max_time=00:00:01:00"]],
)
def test_every_shipped_config_passes_the_argument_check(overrides, tmp_path):
    check_instantiated_groups(compose_with_paths("train", overrides, tmp_path))


def test_argument_check_names_the_key(tmp_path):
    cases = {
        "trainer.precision=bf17": "trainer.precision='bf17': lightning.Trainer expects one of 64, 32, 16",
        "+trainer.max_stepz=3": "trainer.max_stepz=3: lightning.Trainer has no argument 'max_stepz'; did you mean",
        "callbacks.model_checkpoint.save_top_k=best": "callbacks.model_checkpoint.save_top_k='best': ",
        "trainer.log_every_n_steps=1.5": "trainer.log_every_n_steps=1.5: lightning.Trainer expects int or None",
    }
    for override, message in cases.items():
        cfg = compose_with_paths("train", [override], tmp_path)
        with pytest.raises(HdmapError) as err:
            check_instantiated_groups(cfg)
        assert str(err.value).startswith(message), str(err.value)


def test_options_the_trainer_rejects_name_the_group(tmp_path):
    from hdmap_seg.checks import instantiate_configured

    cfg = compose_with_paths("train", ["trainer.accelerator=tpu2"], tmp_path)
    with pytest.raises(HdmapError, match=r"^trainer: lightning.Trainer does not accept .*tpu2"):
        instantiate_configured(cfg.trainer, "trainer")


# -------------------------------------------------------------------- 7. class list vs head outputs


def test_infer_with_a_class_list_shorter_than_the_head(checkpoint, drive_log, tmp_path):
    def drop_last_class(ckpt):
        classes = ckpt["hyper_parameters"]["classes"]
        classes["classes"] = classes["classes"][:5]

    ckpt = edited_checkpoint(checkpoint, tmp_path / "five.ckpt", drop_last_class)
    proc = run_infer(*common(ckpt, drive_log, tmp_path / "out"))
    assert_one_line_error(proc, f"{ckpt}: its class list has 5 classes", "but its model has 6 outputs")


def test_a_head_of_other_outputs_than_its_config_is_rejected(checkpoint, tmp_path):
    def five_everywhere_but_the_weights(ckpt):
        ckpt["hyper_parameters"]["classes"]["classes"] = ckpt["hyper_parameters"]["classes"]["classes"][:5]
        ckpt["hyper_parameters"]["model_config"]["num_classes"] = 5

    ckpt = edited_checkpoint(checkpoint, tmp_path / "five.ckpt", five_everywhere_but_the_weights)
    from hdmap_seg.module import load_segmenter

    read_checkpoint(ckpt)  # consistent hyper-parameters ...
    with pytest.raises(
        HdmapError, match=r"decode_head.classifier.weight is \(6, 32, 1, 1\) there but \(5, 32"
    ):
        load_segmenter(ckpt)  # ... but not the weights


# -------------------------------------------------------------------- 8. truncated training images


def test_check_decodes_every_file_and_reports_all_bad_ones(tmp_path):
    root = write_toy_dataset(tmp_path / "roads", n_train=40, n_val=4)
    bad_png = truncate(root / "images/train/0003.png")
    bad_jpg = truncate(as_jpeg(root / "images/train/0007.png"))
    bad_mask = truncate(root / "masks/val/0001.png")
    dm = SegDataModule(root, num_classes=6, num_workers=2)
    with pytest.raises(HdmapError) as err:
        dm.check()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("3 of 44 samples of splits 'train' and 'val' are bad: ")
    assert f"{bad_png}: cannot be decoded as an image (image file is truncated" in message
    assert f"{bad_jpg}: cannot be decoded as an image (image file is truncated" in message
    assert f"{bad_mask}: cannot be read as a mask" in message


def test_check_names_ten_bad_files_and_counts_the_rest(tmp_path):
    root = write_toy_dataset(tmp_path / "roads", n_train=14, n_val=1)
    for i in range(12):
        truncate(root / f"images/train/{i:04d}.png")
    with pytest.raises(HdmapError) as err:
        SegDataModule(root, num_classes=6, num_workers=0).check()
    message = str(err.value)
    assert message.startswith("12 of 14 samples of split 'train' are bad: ")
    assert message.count("cannot be decoded") == 10 and message.endswith("; and 2 more")


def test_a_good_jpeg_data_set_passes(tmp_path):
    root = write_toy_dataset(tmp_path / "roads", n_train=3, n_val=1)
    for png in (root / "images/train").glob("*.png"):
        as_jpeg(png)
    SegDataModule(root, num_classes=6, num_workers=0).check()


def test_train_with_a_truncated_jpeg_stops_before_training(tmp_path):
    root = write_toy_dataset(tmp_path / "roads", n_train=40, n_val=2)
    bad = truncate(as_jpeg(root / "images/train/0011.png"))
    proc = run_script("train.py", *tiny_overrides(root, tmp_path), "data.num_workers=2")
    assert_one_line_error(proc, f"{bad}: cannot be decoded as an image (image file is truncated")
    assert not (tmp_path / "run/checkpoints").exists()


# -------------------------------------------------------------------- 9. sliding window


def test_infer_window_too_small(checkpoint, drive_log, tmp_path):
    out = tmp_path / "out"
    proc = run_infer(*common(checkpoint, drive_log, out), "window=[1,1]")
    assert_one_line_error(proc, "window=[1, 1]: too small for a sliding window")
    assert not (out / drive_log.name).exists(), "nothing was predicted"


def test_eval_stride_not_positive(checkpoint, toy_dataset, tmp_path):
    proc = run_script(
        "eval.py",
        f"ckpt_path={checkpoint}",
        f"data.root={toy_dataset}",
        f"out_dir={tmp_path}/eval",
        f"hydra.run.dir={tmp_path}/hydra",
        "trainer.accelerator=cpu",
        "num_workers=0",
        "window=[64,64]",
        "stride=[0,32]",
    )
    assert_one_line_error(proc, "stride=[0, 32]: expected [height, width], two whole numbers of pixels > 0")


def test_window_check():
    check_window(None, None)
    check_window([512, 512], None, size_divisor=32)
    check_window([64, 96], [32, 48], size_divisor=32)
    for window, stride, divisor, message in [
        ([16, 64], None, 32, r"window=\[16, 64\]: each side must be at least the model's size divisor 32"),
        ([1, 1], None, 1, r"window=\[1, 1\]: too small"),
        ([64], None, 1, r"window=\[64\]: expected \[height, width\]"),
        ([64, 64], [32, -1], 1, r"stride=\[32, -1\]: expected"),
        ("64", None, 1, r"window='64': expected"),
    ]:
        with pytest.raises(HdmapError, match=message):
            check_window(window, stride, size_divisor=divisor)


# -------------------------------------------------------------------- checkpoints that cannot be torn


def test_a_checkpoint_save_that_fails_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.arange(1000)}, last)
    before = last.read_bytes()

    def half_then_full_disk(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full_disk)
    # atomic_path turns a full disk into one line naming the file.
    with pytest.raises(HdmapError, match="last.ckpt: no space left on the device"):
        io.save_checkpoint({"global_step": 2, "w": torch.arange(1000)}, last)
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"], "no temporary file left"
    assert torch.load(last, weights_only=True)["global_step"] == 1


def test_the_trainer_saves_checkpoints_atomically(tmp_path):
    cfg = compose_with_paths("train", ["trainer=cpu"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_whole_checkpoint_round_trips(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"x": 3, "t": torch.ones(3)}, path)
    loaded = io.load_checkpoint(path, weights_only=True)
    assert loaded["x"] == 3 and torch.equal(loaded["t"], torch.ones(3))


def test_an_unquoted_non_ascii_override_is_one_line_with_the_way_out(tmp_path):
    proc = run_infer(f"ckpt_path={tmp_path}/straße/model.ckpt", "logs=x", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(
        proc, f"cannot parse the override 'ckpt_path={tmp_path}/straße/model.ckpt'", "quote"
    )
    proc = run_infer(f"ckpt_path='{tmp_path}/straße/model.ckpt'", "logs=x", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, f"{tmp_path}/straße/model.ckpt: checkpoint not found")


def test_infer_window_under_the_models_size_divisor_leaves_nothing_behind(checkpoint, drive_log, tmp_path):
    out = tmp_path / "out"
    proc = run_infer(*common(checkpoint, drive_log, out), "window=[16,64]")
    assert_one_line_error(proc, "window=[16, 64]: each side must be at least the model's size divisor 32")
    assert not (out / "run.json").exists(), "a refused run records nothing that a rerun would be held to"
