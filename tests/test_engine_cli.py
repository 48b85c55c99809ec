"""`fusegan train / sample / interpolate`: useful help, one-line errors, and outputs from a real checkpoint."""
import subprocess
import sys

import pytest
from PIL import Image

from fusegan.engine.cli import main
from fusegan.engine.config import TrainConfig
from fusegan.engine.trainer import train

TINY = ["--batch", "8", "--workers", "0", "--impl", "ref", "--device", "cpu", "--no-progress", "--no-tensorboard",
        "--nz", "8", "--ngf", "4", "--ndf", "4"]


def run_main(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits on --help and on errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_help_lists_engine_and_recipe_options(capsys):
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    for option in ("--recipe", "--data", "--resume", "--precision", "--channels-last", "--compile", "--metrics",
                   "--inception", "--seed", "--ngf"):  # --ngf: the default recipe's (dcgan) own option
        assert option in out, option
    assert "digits" in out


def test_train_help_of_another_recipe_shows_its_options(capsys):
    code, out, _ = run_main(capsys, "train", "--recipe", "stylegan2", "--help")
    assert code == 0 and "--cfg" in out and "--r1-gamma" in out and "--ngf" not in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--recipe", "nope"], "invalid choice: 'nope'"),
    (["train", "--steps", "many"], "invalid int value"),
])
def test_bad_options_give_one_line(capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_missing_data_path_gives_one_line_not_a_traceback(tmp_path):
    missing = tmp_path / "no_such_folder"
    proc = subprocess.run([sys.executable, "-m", "fusegan.engine", "train", "--data", str(missing), "--steps", "1",
                           "--out", str(tmp_path / "runs"), *TINY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in proc.stderr


def test_recipe_without_builtin_data_asks_for_data(capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "--recipe", "pix2pix", "--out", str(tmp_path), "--device", "cpu")
    assert code == 2 and "--data" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    train(TrainConfig(recipe="dcgan", data="digits", res=32, batch=8, steps=2, snap=2, workers=0, impl="ref",
                      device="cpu", progress=False, tensorboard=False, run_dir=str(run_dir),
                      recipe_options={"nz": 8, "ngf": 4, "ndf": 4}))
    return run_dir


def test_sample_writes_a_grid(capsys, tiny_run, tmp_path):
    out = tmp_path / "grid.png"
    code, text, err = run_main(capsys, "sample", "--ckpt", str(tiny_run), "--n", "6", "--nrow", "3",
                               "--out", str(out), "--device", "cpu")
    assert code == 0, err
    with Image.open(out) as image:  # 3 x 2 tiles of 32 px with 1 px borders, one channel
        assert image.size == (3 * 33 + 1, 2 * 33 + 1) and image.mode == "L"


def test_interpolate_writes_a_strip(capsys, tiny_run, tmp_path):
    out = tmp_path / "strip.png"
    code, _, err = run_main(capsys, "interpolate", "--ckpt", str(tiny_run), "--seeds", "3,4,5", "--steps", "4",
                            "--out", str(out), "--device", "cpu")
    assert code == 0, err
    with Image.open(out) as image:  # 2 segments x 4 steps + the last endpoint = 9 images, 4 per row
        assert image.size == (4 * 33 + 1, 3 * 33 + 1)


def test_sample_from_a_missing_checkpoint_is_one_line(capsys, tmp_path):
    code, _, err = run_main(capsys, "sample", "--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png"),
                            "--device", "cpu")
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
