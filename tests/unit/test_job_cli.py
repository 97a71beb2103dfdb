"""The job's command line, k selection, output locations, plots, samples, local command."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "job"))
import featurize  # noqa: E402
import featurize_pca  # noqa: E402
import outputs  # noqa: E402
import reduce  # noqa: E402

from sparkfab import localjob, samples  # noqa: E402

BASE = ["--input", "in", "--output", "out/r1"]


def test_defaults_pick_k_by_95_percent_variance_and_generate_a_run_id() -> None:
    args = featurize_pca.parse_args(BASE)
    assert args.k is None and args.variance == 0.95
    assert args.weights == "imagenet" and args.input_size == 224 and args.tf_threads == 1
    assert args.engine == "onnx"
    assert featurize_pca.parse_args([*BASE, "--engine", "tensorflow"]).engine == "tensorflow"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", args.run_id)


def test_k_turns_the_variance_default_off() -> None:
    args = featurize_pca.parse_args([*BASE, "--k", "7"])
    assert args.k == 7 and args.variance is None


@pytest.mark.parametrize("extra", [
    ["--k", "3", "--variance", "0.9"], ["--k", "1"], ["--k", "5000"], ["--variance", "0"],
    ["--variance", "1.5"], ["--batch-size", "0"], ["--input-size", "8"], ["--tf-threads", "x"],
    ["--engine", "openvino"],
])
def test_bad_settings_exit_2_with_a_message(extra: list[str],
                                            capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        featurize_pca.parse_args([*BASE, *extra])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_documents_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        featurize_pca.parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--input", "--output", "--weights", "--k", "--variance", "--input-size",
                 "--batch-size", "--engine", "--tf-threads", "--images-per-partition",
                 "--run-id"]:
        assert flag in text


def test_missing_required_input_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        featurize_pca.parse_args(["--output", "o"])


@pytest.mark.parametrize("explained, target, k", [
    ([0.5, 0.3, 0.15, 0.05], 0.95, 3),
    ([0.5, 0.3, 0.15, 0.05], 0.80, 2),
    ([0.97, 0.02, 0.01], 0.95, 2),  # never fewer than two: the PC1/PC2 plot
    ([0.4, 0.3, 0.2, 0.1], 1.0, 4),
    ([0.5, 0.2, 0.1], 0.99, 3),  # target not reached: all of them
])
def test_choose_k_is_the_smallest_reaching_the_target(explained: list[float], target: float,
                                                      k: int) -> None:
    assert reduce.choose_k(explained, target) == k


def test_cumulative_variance_is_monotonic_and_capped() -> None:
    r = reduce.PcaResult(k=3, explained=[0.6, 0.3, 0.1 + 1e-12], scores=None)
    assert r.cumulative[:2] == pytest.approx([0.6, 0.9])
    assert r.cumulative[-1] == 1.0  # a float sum just above 1 is capped


def test_temporary_location_is_a_hidden_sibling_of_the_output() -> None:
    assert outputs.temp_location("s3a://b/runs/r1", "X") == "s3a://b/runs/_tmp-X"
    assert outputs.temp_location("/data/out/r1/", "X") == "/data/out/_tmp-X"
    with pytest.raises(outputs.OutputError):
        outputs.temp_location("s3a://bucket", "X")


def test_weights_spec_errors_are_caught_before_any_model_is_built(tmp_path: Path) -> None:
    with pytest.raises(featurize.WeightsError, match="expected 'imagenet', 'random'"):
        featurize.load_weights("model.pt", 224)
    with pytest.raises(featurize.WeightsError, match="not found"):
        featurize.load_weights(str(tmp_path / "absent.weights.h5"), 224)
    with pytest.raises(featurize.WeightsError, match="ImageNet weights exist for"):
        featurize.load_weights("imagenet", 100)


def test_plots_are_png_images() -> None:
    points = [("apple", 1.0, 2.0), ("lime", -1.0, 0.5), ("apple", 0.5, 1.5)]
    assert outputs.scatter_png(points, "t").startswith(b"\x89PNG")
    assert outputs.variance_png([0.6, 0.3], [0.6, 0.9], 0.95).startswith(b"\x89PNG")


def test_samples_are_deterministic_and_one_folder_per_class(tmp_path: Path) -> None:
    assert samples.generate(tmp_path / "a", 2) == 2 * len(samples.CLASSES)
    samples.generate(tmp_path / "b", 2)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert [p.parts[0] for p in files_a[::2]] == sorted(samples.CLASSES)
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert samples.render("apple", 0).size == (samples.SIZE, samples.SIZE)


def test_local_spark_binds_loopback_only_and_uses_this_python() -> None:
    opts = localjob.JobOptions(input="/i", output="/o/r", weights="random", k=4, run_id="r")
    cmd = localjob.local_command(opts, cores=2)
    assert cmd[cmd.index("--master") + 1] == "local[2]"
    assert "spark.driver.bindAddress=127.0.0.1" in cmd and "spark.ui.enabled=false" in cmd
    assert cmd[-10:] == ["--input", "/i", "--output", "/o/r", "--weights", "random",
                         "--k", "4", "--run-id", "r"]
    assert localjob.local_env()["PYSPARK_PYTHON"] == sys.executable
    opts.engine = "tensorflow"
    assert localjob.local_command(opts)[-6:-4] == ["--engine", "tensorflow"]
    # The class archive's options join the driver JVM's own, in the one setting Spark reads.
    with_archive = localjob.local_command(opts, java_options="-XX:SharedArchiveFile=/a.jsa")
    java = [a for a in with_archive if a.startswith("spark.driver.extraJavaOptions=")]
    assert java == ["spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 "
                    "-XX:SharedArchiveFile=/a.jsa"]


def test_local_mode_is_quiet_before_spark_reads_its_log_level() -> None:
    env = localjob.local_env()
    # Bound to loopback explicitly: no "hostname resolves to a loopback address" warning.
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    conf = env["SPARK_SUBMIT_OPTS"].split("-Dlog4j2.configurationFile=file://", 1)[1]
    text = Path(conf).read_text()
    assert "rootLogger.level = warn" in text and "SYSTEM_ERR" in text


def test_the_noise_tensorflow_prints_at_import_is_dropped_and_the_rest_kept() -> None:
    import io

    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to "
             "STDERR\n",
             "I0000 00:00:1796162435.661410   26507 port.cc:153] oneDNN custom operations are "
             "on. You may see slightly different numerical results\n",
             "WARNING: Using incubator modules: jdk.incubator.vector\n",
             "[featurize_pca] list ...\n", "error: input path does not exist: /x\n"]
    shown, errors = io.StringIO(), []
    localjob._pump(io.StringIO("".join(lines)), shown, errors, [])
    assert shown.getvalue() == "[featurize_pca] list ...\n"
    assert errors == ["input path does not exist: /x"]


def test_sparkfab_submit_runs_pysparks_launcher_with_this_python_and_local_defaults(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(localjob.os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    localjob.submit_main(["job/featurize_pca.py", "--input", "i", "--output", "o"])
    (path, argv, env), = calls
    assert path == str(localjob.spark_submit()) == argv[0]
    assert argv[1:3] == ["--master", "local[*]"] and "spark.driver.host=127.0.0.1" in argv
    assert argv[-5:] == ["job/featurize_pca.py", "--input", "i", "--output", "o"]
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == sys.executable
    assert Path(env["JAVA_HOME"], "bin", "java").exists()
    calls.clear()
    localjob.submit_main(["--master", "spark://h:7077", "app.py"])
    assert calls[0][1][1:] == ["--master", "spark://h:7077", "app.py"]  # no local defaults


def test_fab_run_job_help_states_the_jobs_own_defaults() -> None:
    """tasks.py cannot import the job (seconds of NumPy/pandas on every `fab`): the
    defaults its help quotes are checked here against the job's parser instead."""
    import tasks

    defaults = {a.dest: a.default for a in featurize_pca.build_parser()._actions}
    quoted = {dest: re.search(r"\(default ([0-9.]+)\)", text)
              for dest, text in tasks._JOB_HELP.items()}
    checked = {dest: m.group(1) for dest, m in quoted.items() if m and dest in defaults}
    assert {"input_size", "batch_size", "tf_threads", "images_per_partition"} <= set(checked)
    for dest, value in checked.items():
        job = defaults[dest] if defaults[dest] is not None else featurize_pca.DEFAULT_VARIANCE
        assert float(value) == float(job), f"--{dest}: fab says {value}, the job {job}"


def test_feature_store_options() -> None:
    args = featurize_pca.parse_args(["--input", "/i", "--output", "s3a://bkt/runs/r1"])
    assert args.features == "s3a://bkt/features" and not args.refeaturize
    assert args.pca_from is None and args.variance == featurize_pca.DEFAULT_VARIANCE
    args = featurize_pca.parse_args(["--input", "/i", "--output", "/o/r", "--pca-from", "/o/q",
                                     "--features", "/f", "--refeaturize"])
    assert (args.features, args.pca_from, args.refeaturize) == ("/f", "/o/q", True)
    assert args.k is None and args.variance is None  # k comes from the earlier basis
    for extra in (["--k", "3"], ["--variance", "0.9"]):
        with pytest.raises(SystemExit) as exc:
            featurize_pca.parse_args(["--input", "/i", "--output", "/o/r", "--pca-from", "/o/q",
                                      *extra])
        assert exc.value.code == 2
    opts = localjob.JobOptions(input="/i", output="/o/r", weights="random", features="/f",
                               refeaturize=True, pca_from="/o/q")
    assert opts.to_args()[-5:] == ["--features", "/f", "--pca-from", "/o/q", "--refeaturize"]


def test_a_pca_basis_round_trips_and_refuses_other_features() -> None:
    result = reduce.PcaResult(k=2, explained=[0.7, 0.2], scores=None, mean=[1.0, 2.0, 3.0],
                              components=[[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    data = reduce.basis_parquet(result, "tensorflow-abc")
    mean, components, explained = reduce.read_basis(data, "tensorflow-abc", "runs/r1")
    assert (mean, components, explained) == (result.mean, result.components, result.explained)
    with pytest.raises(reduce.BasisError, match="fitted on features of model setup "
                                                "tensorflow-abc"):
        reduce.read_basis(data, "onnx-def", "runs/r1")


def test_the_run_summary_says_what_the_store_did() -> None:
    manifest = {
        "counts": {"input": 12, "ok": 10, "failed": 2, "skipped": 0},
        "pca": {"k": 2, "explained_variance": [0.5, 0.2],
                "cumulative_explained_variance": [0.5, 0.7],
                "basis": {"source": "pca_from", "run": "/o/r1", "run_id": "r1"}},
        "store": {"path": "/f", "fingerprint": "tensorflow-abc", "reused": 9,
                  "featurized_now": 3, "failed": 2, "failed_reused": 1,
                  "size": {"images": 40, "batches": 3, "bytes": 2_500_000}},
        "timings_s": {"total": 20.0, "featurize": 3.0, "pca": 1.0, "write": 1.0},
        "output": "/o/r2", "files": ["features.parquet"],
    }
    text = localjob.summary(manifest)
    assert ("feature store: 9 reused, 3 featurized now, 2 failed (1 known bad, not retried);"
            " it holds 40 images in 3 batches, 2.5 MB") in text
    assert "projected on the basis of /o/r1 (not refitted)" in text
    assert "featurize 3.0 s, 1 img/s" in text
