"""The dmfjax command line: help, exit codes, typed overrides, shipped specs."""

import subprocess
import sys

import pytest
from sweep_helpers import ROOT, cli_env, write_spec

from dmfjax import cli
from dmfjax.sweep import supervisor
from dmfjax import spec as spec_lib
from dmfjax.spec import Spec, SpecError


def _dmfjax(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "dmfjax", *args], env=cli_env(),
                        capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_exits_0_and_lists_every_spec_field(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["sweep", "--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  for name in ("depth", "init_scale", "n_obs", "seeds", "max_batch", "nn_tol"):
    assert f"\n  {name} " in text
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0 and "sweep" in capsys.readouterr().out


def test_missing_spec_and_unknown_flags_exit_2(capsys):
  for argv in (["sweep", "--out", "x"], ["sweep", "--spec", "quickstart", "--bogus"], []):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("override, field", [
    ("alignment=true2", "alignment"), ("symmetric=yes", "symmetric"),
    ("alignment=2", "alignment"), ("name=[1]", "name"), ("seeds=0,4294967296", "seeds"),
    ("seeds=[-1]", "seeds"), ("depth=two", "depth"), ("lr=fast", "lr"),
    ("max_steps=1e99", "max_steps"), ("problem_seed=2147483648", "problem_seed")])
def test_bad_overrides_exit_2_before_anything_is_written(tmp_path, capsys, override, field):
  out = tmp_path / "out"
  code = cli.main(["sweep", "--spec", "quickstart", "--out", str(out), "--set", override])
  assert code == 2
  assert capsys.readouterr().err.startswith(f"error: {field}: ")
  assert not out.exists()


def test_typed_overrides():
  spec = spec_lib.apply_overrides(Spec(), [
      "alignment=true", "symmetric=False", "width=none", "depth=2,3", "n_obs=[100,200]",
      "init=gaussian,identity", "lr=1e-3", "name='123'", "seeds=[5]", "data='/a b/u.data'"])
  assert spec.alignment is True and spec.symmetric is False and spec.width is None
  assert spec.depth == [2, 3] and spec.n_obs == [100, 200]
  assert spec.init == ["gaussian", "identity"] and spec.lr == 1e-3 and spec.name == "123"
  assert spec.data == "/a b/u.data"
  with pytest.raises(SpecError, match="^name: "):  # a number is no name: quote it
    spec_lib.apply_overrides(Spec(), ["name=123"])
  runs = spec_lib.expand(spec_lib.apply_overrides(Spec(n_rows=6, n_cols=5, rank=2, n_obs=9),
                                                  ["seeds=[5]"]))
  assert [r["seed"] for r in runs] == [5]  # a list: the seeds themselves
  runs = spec_lib.expand(spec_lib.apply_overrides(Spec(n_rows=6, n_cols=5, rank=2, n_obs=9),
                                                  ["seeds=2"]))
  assert [r["seed"] for r in runs] == [0, 1]  # a number: a count


def test_spec_file_errors_name_the_file_and_line(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text("from dmfjax.spec import Spec\n\nSPEC = Spec(\n")
  with pytest.raises(SpecError, match=r"bad\.py, line \d+"):
    spec_lib.load_spec(bad)
  bad.write_text("from dmfjax.spec import Spec\nx = 1\nSPEC = Spec(depthh=3)\n")
  assert cli.main(["sweep", "--spec", str(bad), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "bad.py, line 3" in err and "depthh" in err
  assert cli.main(["sweep", "--spec", "no_such_spec", "--dry_run"]) == 2
  assert "quickstart" in capsys.readouterr().err  # lists the shipped specs


def test_shipped_specs_by_name(capsys):
  assert cli.main(["specs"]) == 0
  listed = capsys.readouterr().out
  for name in ("quickstart", "paper_fig1", "paper_fig2", "paper_fig3", "paper_sensing"):
    assert name in listed
  assert cli.main(["sweep", "--spec", "quickstart", "--dry_run", "--workers", "1"]) == 0
  assert "spec quickstart: 15 runs" in capsys.readouterr().out


def test_report_of_a_missing_directory_exits_2(tmp_path, capsys):
  assert cli.main(["report", "--results", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "r")]) == 2
  assert "not a dmfjax results directory" in capsys.readouterr().err


def test_console_entry_points_run_as_modules(tmp_path):
  """python -m dmfjax.sweep and the dmfjax command share one parser."""
  spec = write_spec(tmp_path / "spec.py")
  proc = subprocess.run([sys.executable, "-m", "dmfjax.sweep", f"--spec={spec}",
                         "--dry_run"], env=cli_env(), capture_output=True, text=True,
                        cwd=ROOT, timeout=300)
  assert proc.returncode == 0 and "12 runs" in proc.stdout
  proc = _dmfjax("sweep", "--help", cwd=tmp_path)
  assert proc.returncode == 0 and "init_scale" in proc.stdout


def test_compilation_cache_serves_a_second_sweep(tmp_path):
  """Two sweeps into fresh directories: the second compiles nothing, it loads."""
  import re
  spec = write_spec(tmp_path / "spec.py", n_rows=7, n_cols=9, max_steps=200)
  done = []
  for out in ("a", "b"):
    proc = subprocess.run(
        [sys.executable, "-m", "dmfjax", "sweep", f"--spec={spec}",
         f"--out={tmp_path / out}", f"--compile_cache={tmp_path / 'cache'}", "--workers=2"],
        env=cli_env(), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    done.append(re.search(r"\((\d+) programs in [\d.]+s: (\d+) compiled, (\d+) from the "
                          r"compilation cache\)", proc.stderr).groups())
  (programs_a, compiled_a, _), (programs_b, compiled_b, cached_b) = done
  assert int(compiled_a) > 0 and int(compiled_b) == 0 and cached_b == programs_b
  assert any((tmp_path / "cache").iterdir())
  off = subprocess.run(
      [sys.executable, "-m", "dmfjax", "sweep", f"--spec={spec}",
       f"--out={tmp_path / 'c'}", "--compile_cache=none", "--workers=1"],
      env=cli_env(), capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert off.returncode == 0 and " 0 from the compilation cache" in off.stderr


def test_flagfile_gives_the_same_plan_as_the_command_line(tmp_path, capsys):
  """``--flagfile`` (absl's format: one flag a line, comments, nesting) is the
  command line written in a file."""
  flags = ["--spec=quickstart", "--set=depth=2,3", "--set=seeds=2", "--set=max_steps=500",
           "--num_shards=2", "--shard_index=1"]
  assert cli.main(["sweep", "--dry_run", *flags]) == 0
  direct = capsys.readouterr().out
  inner = tmp_path / "inner.flags"
  inner.write_text("--num_shards=2\n--shard_index=1\n")
  outer = tmp_path / "sweep.flags"
  outer.write_text("# the quick start, reduced\n" + "\n".join(flags[:4])
                   + f"\n--flagfile={inner}\n")
  assert cli.main(["sweep", "--dry_run", f"--flagfile={outer}"]) == 0
  from_file = capsys.readouterr().out
  assert from_file == direct and "runs" in direct
  assert cli.main(["sweep", "--dry_run", "--spec=quickstart", "--set=depth=2,3",
                   "--set=seeds=2", "--set=max_steps=500"]) == 0
  assert capsys.readouterr().out != direct  # the shard flags in the file did count
  with pytest.raises(SystemExit) as e:
    cli.main(["sweep", f"--flagfile={tmp_path / 'missing.flags'}"])
  assert e.value.code == 2 and "flagfile: Unable to open" in capsys.readouterr().err


def test_process_log_prefixes_each_line_with_the_process_index(caplog):
  """A ``--distributed`` process's messages go to absl logging, one record a
  line, prefixed ``[p<i>/<n>]``; partial lines wait for their end."""
  stream = supervisor.ProcessLog(1, 4)
  with caplog.at_level("INFO", logger="absl"):
    stream.write("[dmfjax] first\n[dmfjax] sec")
    stream.write("ond\n\n")
    stream.write("[dmfjax] tail")
    stream.flush()
  messages = [r.getMessage() for r in caplog.records if r.name == "absl"]
  assert messages == ["[p1/4] [dmfjax] first", "[p1/4] [dmfjax] second",
                      "[p1/4] [dmfjax] tail"]
  assert not stream.isatty()


def test_flag_errors_name_the_flag(capsys):
  assert cli.main(["sweep", "--spec=quickstart", "--out=x", "--memory_gb=-1"]) == 2
  assert "memory_gb: must be > 0" in capsys.readouterr().err
  assert cli.main(["sweep", "--spec=quickstart", "--out=x", "--distributed",
                   "--num_shards=2"]) == 2
  assert "distributed: each process is a shard" in capsys.readouterr().err
