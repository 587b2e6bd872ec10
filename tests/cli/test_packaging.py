"""Packaging: the kernelspec is registered by pip, installable elsewhere, and the CLI answers."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from e2b_kernel.cli.install import install_kernelspec

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_kernelspec_registered_by_pip_install() -> None:
    out = subprocess.run(
        [str(BIN / "jupyter"), "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    specs = json.loads(out)["kernelspecs"]
    assert "e2b-python" in specs, f"e2b-python missing from {sorted(specs)}"
    spec = specs["e2b-python"]
    assert spec["spec"]["display_name"] == "E2B Python"
    assert spec["spec"]["language"] == "python"
    resources = Path(spec["resource_dir"])
    assert (resources / "logo-32x32.png").is_file()
    assert (resources / "logo-64x64.png").is_file()


def test_install_into_prefix_pins_this_interpreter(tmp_path: Path) -> None:
    dest = Path(install_kernelspec(prefix=str(tmp_path), name="e2b-test", display_name="E2B T"))
    assert dest == tmp_path / "share" / "jupyter" / "kernels" / "e2b-test"
    spec = json.loads((dest / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert spec["argv"][1:] == ["-m", "e2b_kernel", "-f", "{connection_file}"]
    assert spec["display_name"] == "E2B T"
    assert {p.name for p in dest.iterdir()} == {"kernel.json", "logo-32x32.png", "logo-64x64.png"}


def test_install_cli_requires_exactly_one_location(tmp_path: Path) -> None:
    cli = str(BIN / "e2b-kernel")
    none = subprocess.run([cli, "install"], capture_output=True, text=True)
    assert none.returncode == 2
    assert "one of the arguments --user --sys-prefix --prefix is required" in none.stderr
    both = subprocess.run(
        [cli, "install", "--user", "--prefix", str(tmp_path)], capture_output=True, text=True
    )
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
    ok = subprocess.run(
        [cli, "install", "--prefix", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "Installed kernelspec 'e2b-python'" in ok.stdout


def test_install_names_a_bad_name_or_folder_and_the_fix(tmp_path: Path) -> None:
    cli = str(BIN / "e2b-kernel")
    bad_name = subprocess.run(
        [cli, "install", "--prefix", str(tmp_path), "--name", "bad name!"],
        capture_output=True,
        text=True,
    )
    assert bad_name.returncode == 2 and "Traceback" not in bad_name.stderr
    assert "--name: Invalid kernel name 'bad name!'" in bad_name.stderr
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    bad_folder = subprocess.run(
        [cli, "install", "--prefix", str(a_file)], capture_output=True, text=True
    )
    assert bad_folder.returncode == 1 and "Traceback" not in bad_folder.stderr
    assert f"cannot write the kernelspec into {a_file}/share/jupyter" in bad_folder.stderr


@pytest.mark.parametrize("command", [[], ["install"], ["local"], ["sandboxes"]])
def test_every_command_has_help(command: list[str]) -> None:
    done = subprocess.run(
        [str(BIN / "e2b-kernel"), *command, "--help"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("usage: e2b-kernel")


@pytest.mark.timeout(300)
def test_wheel_ships_kernelspec_as_shared_data_and_typed_marker(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("e2b_kernel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "e2b_kernel-0.1.0.data/data/share/jupyter/kernels/e2b-python/"
    assert {data + "kernel.json", data + "logo-32x32.png", data + "logo-64x64.png"} <= names
    assert "e2b_kernel/py.typed" in names
    # Also inside the package, where `e2b-kernel install` reads it in a non-editable install.
    assert "e2b_kernel/kernelspec/kernel.json" in names
