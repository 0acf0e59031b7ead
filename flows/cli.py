"""The `labelloop` command line. Stage and cycle commands run the Prefect flows; the rest call `labelloop`.

Prefect, MLflow and Great Expectations are imported inside the commands that need them, so
`labelloop --help` and pure commands start fast.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
import yaml

from labelloop.core.redact import redact_text, redact_uri  # only `re`: cheap at CLI start

app = typer.Typer(help="labelloop: a production active-learning loop (capture → select → label → version → retrain → gate).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Versions of the labelled set (git tags + DVC).", no_args_is_help=True)
model_app = typer.Typer(help="Registered models and the champion alias.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _process_setup() -> None:
    """Before any command runs (and so before scikit-learn/xgboost load the OpenMP runtime, which reads
    these once): passive OpenMP waiting on the CPUs actually available; a value the user set is kept."""
    from labelloop.core.threads import apply_thread_environment

    apply_thread_environment()


app.add_typer(model_app, name="model")

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace directory [default: $LABELLOOP_WORKSPACE, else ./workspace]."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a param for this run: SECTION.KEY=VALUE (repeatable), e.g. select.batch_size=50."),
]


def _workspace(path: Path | None):
    """The workspace a command works on: PATH, else $LABELLOOP_WORKSPACE, else ./workspace; its MLflow
    store is the tracking server $LABELLOOP_TRACKING_URI names, if set."""
    from labelloop.tasks.environment import open_workspace

    return open_workspace(path)


def _retry_policy():
    """The retries for outside services ($LABELLOOP_RETRY_*); a bad value is one error line."""
    from labelloop.tasks.environment import retry_policy

    try:
        return retry_policy()
    except ValueError as error:
        _fail(error)


def _quiet_environment(workspace_root: Path, verbose: bool = False) -> None:
    """Offline, quiet defaults; Prefect runs kept in the workspace unless a Prefect API is configured."""
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1", "PYTHONWARNINGS": "ignore",
    }.items():
        os.environ.setdefault(key, value)
    if not os.environ.get("PREFECT_API_URL"):
        from labelloop.workspace import Workspace

        os.environ.setdefault("PREFECT_HOME", str(Workspace.at(workspace_root).prefect_home))
        # Prefect's 20 s default for its temporary server to answer is too tight on a busy 2-core machine.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "true")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    if not verbose:
        for name in ("mlflow", "great_expectations", "great_expectations.data_context.types.base", "dvc", "alembic"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _use_prefect_server(ws) -> None:
    """Point this process's flows at the workspace's background Prefect server (started by the first
    command, reused by the next: `labelloop.flows.server`) — unless PREFECT_API_URL names an API already
    (the production stack) or LABELLOOP_PREFECT_SERVER=ephemeral asks for Prefect's temporary in-process one.

    Called before Prefect is imported: Prefect reads PREFECT_API_URL once, when it loads."""
    from labelloop.tasks.environment import prefect_server_mode

    if os.environ.get("PREFECT_API_URL"):
        return
    try:
        if prefect_server_mode() == "ephemeral":
            return
        from labelloop.flows import server

        process, started = server.ensure(ws)
    except (ValueError, RuntimeError) as error:  # a bad mode; the server did not start (its log named)
        _fail(error)
    if started:
        typer.echo(f"started this workspace's Prefect server at {process.url} (pid {process.pid}; later commands reuse it; "
                   f"stop: labelloop server stop -w {shlex.quote(str(ws.root))})", err=True)
    os.environ["PREFECT_API_URL"] = process.api_url


def parse_overrides(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    """`section.key=value` pairs → {section: {key: value}} (values parsed as YAML; nested keys with dots)."""
    overrides: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise typer.BadParameter(f"{pair!r}: expected SECTION.KEY=VALUE, e.g. select.batch_size=50")
        dotted, raw = pair.split("=", 1)
        section, *keys = dotted.split(".")
        target = overrides.setdefault("import_" if section == "import" else section, {})
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = yaml.safe_load(raw)
    return overrides


def _fail(error: Exception) -> NoReturn:
    """Exactly one `error: ...` line on stderr, exit code 2. A multi-line message (a config error lists
    each bad key on its own line) is joined into that one line."""
    if isinstance(error, typer.Exit):
        # Already reported by an inner _fail. typer.Exit is a RuntimeError, so a command's
        # `except RuntimeError: _fail(error)` around it used to print a second, empty `error:` line.
        raise error
    message = ""
    for line in (part.strip() for part in str(error).splitlines()):
        if line:
            message = f"{message}{' ' if message.endswith(':') else '; '}{line}" if message else line
    typer.secho(f"error: {redact_text(message) or type(error).__name__}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _checked_params(ws, overrides: dict[str, dict[str, Any]]):
    """Validate overrides against the workspace's params before any flow starts (clear error, nothing run)."""
    from labelloop.config import ConfigError

    try:
        return ws.require().params().with_overrides(**overrides)
    except ConfigError as error:
        _fail(error)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Directory of the new workspace.")],
    source: Annotated[Path | None, typer.Option(
        help="Labelled parquet/CSV to split into seed, holdout and traffic [default: the shipped satellite set].")] = None,
    label_col: Annotated[str, typer.Option(help="Label column of --source.")] = "label",
    params_file: Annotated[Path | None, typer.Option(
        "--params", help="params.yaml to start from [default: embedded defaults].")] = None,
    id_col: Annotated[list[str] | None, typer.Option(
        help="A row identifier: kept with the rows, never a feature (repeatable). Columns unique per row are "
             "proposed as ids on their own.")] = None,
    numeric_col: Annotated[list[str] | None, typer.Option(help="Read this column as numbers (repeatable).")] = None,
    categorical_col: Annotated[list[str] | None, typer.Option(help="Read this column as categories (repeatable).")] = None,
    text_col: Annotated[list[str] | None, typer.Option(help="Free text, vectorised by the model (repeatable).")] = None,
    drop_col: Annotated[list[str] | None, typer.Option(help="Do not store or use this column (repeatable).")] = None,
    set_: SetOption = None,
) -> None:
    """Create a workspace: data registry (git + DVC + local remote), fixed holdout, seed set `data-v1`, MLflow store.

    Each column's role (id, numeric, categorical, text, label, ignored) is inferred from its values and printed;
    --id-col/--numeric-col/--categorical-col/--text-col/--drop-col (or params.yaml's `schema` section) override it.
    """
    from labelloop.apps.init import init_workspace
    from labelloop.config import ConfigError, load_params
    from labelloop.schema import SchemaError
    from labelloop.workspace import WorkspaceError

    _quiet_environment(Path(path).resolve())
    try:
        params = load_params(params_file).with_overrides(**parse_overrides(set_))
        if source is not None:
            params = params.with_overrides(dataset={"source": str(source.resolve()), "label_column": label_col})
        forced = {key: list(values) for key, values in (("id_columns", id_col), ("numeric_columns", numeric_col),
                                                        ("categorical_columns", categorical_col),
                                                        ("text_columns", text_col), ("drop_columns", drop_col)) if values}
        if forced:
            params = params.with_overrides(schema={key: [*getattr(params.schema_, key), *values]
                                                   for key, values in forced.items()})
        ws = init_workspace(path, params, retry=_retry_policy())
    except (ConfigError, WorkspaceError, SchemaError, ValueError, FileNotFoundError) as error:
        _fail(error)
    _print_schema(ws)
    typer.echo(f"workspace ready at {ws.root} (data-v1: {params.dataset.seed_size} seed labels; "
               f"estimator {ws.params().train.estimator})")


def _print_schema(ws) -> None:
    """The inferred schema as a table, then init's warnings about the columns."""
    from labelloop.apps.init import schema_warnings
    from labelloop.schema import schema_rows

    rows = schema_rows(ws.schema())
    headers = ["column", "role", "type", "nullable", "detail"]
    widths = {h: min(40, max(len(h), *(len(r[h]) for r in rows))) for h in headers}
    typer.echo("  ".join(h.ljust(widths[h]) for h in headers).rstrip())
    for row in rows:
        typer.echo("  ".join(row[h][:widths[h]].ljust(widths[h]) for h in headers).rstrip())
    for warning in schema_warnings(ws):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def _run_cycles(ws, cycles: int, overrides: dict[str, dict[str, Any]], echo_lines: bool = True, after_cycle=None) -> list:
    sections = _section_models(ws, overrides)
    _use_prefect_server(ws)
    from labelloop.flows.cycle import active_learning_cycle

    records = []
    for _ in range(cycles):
        started = time.perf_counter()
        record = active_learning_cycle(str(ws.root), **sections)
        records.append(record)
        if echo_lines:
            typer.echo(f"{record.line()} | {time.perf_counter() - started:4.1f} s")
        if after_cycle is not None:
            after_cycle(record)
    return records


def _label_studio_script() -> Path:
    """The Label Studio install/start/token script labelloop ships (infra/labelstudio.sh runs it in a checkout)."""
    from importlib import resources

    return Path(str(resources.files("labelloop.resources").joinpath("labelstudio.sh")))


def _label_studio_token(url: str) -> None:
    """Make sure the demo has a Label Studio to talk to.

    With LABEL_STUDIO_API_KEY set, the server at `url` is yours. Otherwise the script labelloop ships
    (labelloop/resources/labelstudio.sh, = infra/labelstudio.sh in a checkout) installs Label Studio in
    its own venv under the current directory (first time only), starts it headless on the URL's port and
    creates an access token, which is put in this process's environment only (never in params.yaml or a log).
    """
    from urllib.parse import urlparse

    from labelloop.adapters.vendors.labelstudio import TOKEN_ENV

    if os.environ.get(TOKEN_ENV):
        return
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        _fail(ValueError(f"set {TOKEN_ENV} to an access token of the Label Studio at {redact_uri(url)} "
                         f"(labelloop starts one itself only on localhost)"))
    env = dict(os.environ, LS_PORT=str(parsed.port or 8080))
    uv = Path(sys.executable).parent / "uv"  # installs Label Studio's venv much faster than pip
    if uv.exists():
        env.setdefault("LS_UV", str(uv))
    typer.echo(f"starting Label Studio on {redact_uri(url)} (installs it in .venv-labelstudio the first time)")
    script = _label_studio_script()
    up = subprocess.run(["bash", str(script), "up"], env=env, capture_output=True, text=True, check=False)
    if up.returncode != 0:
        _fail(RuntimeError(f"labelstudio.sh up failed (exit {up.returncode}):\n{up.stderr[-3000:]}"))
    token = subprocess.run(["bash", str(script), "token"], env=env, capture_output=True, text=True, check=False)
    if token.returncode != 0 or not token.stdout.strip():
        _fail(RuntimeError(f"labelstudio.sh token failed: {token.stderr[-2000:]}"))
    os.environ[TOKEN_ENV] = token.stdout.strip()


def _label_studio_team(ws, params):
    """The demo's simulated annotators, working in the real Label Studio between cycles."""
    from typing import cast

    from labelloop.adapters.vendors.labelstudio import LabelStudioVendor
    from labelloop.adapters.vendors.ls_annotators import LabelStudioAnnotators
    from labelloop.columns import ITEM_ID
    from labelloop.core.io import read_parquet
    from labelloop.tasks.vendor import workspace_vendor

    oracle = read_parquet(ws.oracle_path)
    vendor = cast(LabelStudioVendor, workspace_vendor(ws, params.export))  # the demo set export.vendor=label-studio
    team = LabelStudioAnnotators(vendor.client, oracle.set_index(ITEM_ID)["label"], params.export.simulated,
                                 namespace=vendor.namespace)

    def annotate(_record) -> None:
        started = time.perf_counter()
        done = team.work()
        typer.echo(f"  Label Studio: {params.export.simulated.annotators} simulated annotator(s) submitted {done.answers} "
                   f"answers in {done.projects} project(s) in {time.perf_counter() - started:.1f} s; the next import takes them")

    return annotate


def _section_models(ws, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = _checked_params(ws, overrides)
    allowed = {"production", "capture", "select", "export", "import_", "train", "gate"}
    unknown = set(overrides) - allowed
    if unknown:
        _fail(ValueError(f"--set cannot override {sorted(unknown)} per cycle; allowed sections: {sorted(allowed)}"))
    return {name: (params.import_ if name == "import_" else getattr(params, name)) for name in overrides}


# Written into every workspace `labelloop demo` creates: the demo replaces only workspaces bearing it.
DEMO_MARKER = "created-by-demo.json"


def _remove_demo_workspace(ws) -> None:
    """Delete a previous demo workspace — only one the demo created, and never while a run holds it."""
    from labelloop.core.lock import WorkspaceBusyError, workspace_lock

    if not ws.exists():
        _fail(ValueError(f"{ws.root} exists and is not a labelloop workspace; choose another --workspace"))
    if not (ws.state_dir / DEMO_MARKER).exists():
        _fail(ValueError(f"{ws.root} is a labelloop workspace that `labelloop demo` did not create (its labels, registry "
                         f"and models would be lost); the demo replaces only its own workspaces — choose another --workspace"))
    try:
        with workspace_lock(ws):
            typer.echo(f"replacing the previous demo workspace at {ws.root}")
            _stop_background(ws)  # its Prefect server and `labelloop ui` process use files about to be deleted
            shutil.rmtree(ws.root)
    except WorkspaceBusyError as error:
        _fail(error)


def _require_label_studio_sdk() -> None:
    import importlib.util

    if importlib.util.find_spec("label_studio_sdk") is None:
        _fail(RuntimeError("the Label Studio client (label-studio-sdk) is not installed: run `make install` again, or "
                           "`pip install 'labelloop[labelstudio]'`"))


@app.command()
def demo(
    workspace: WorkspaceOption = None,
    cycles: Annotated[int, typer.Option(min=1, help="Active-learning cycles to run.")] = 6,
    vendor: Annotated[str, typer.Option(help="Annotation vendor: simulated, or label-studio (a real server: yours with "
                                              "LABEL_STUDIO_API_KEY set, else installed and started in the current "
                                              "directory; simulated annotators answer in it between cycles).")] = "simulated",
    label_studio_url: Annotated[str | None, typer.Option(help="Label Studio URL [default: export.label_studio_url].")] = None,
    dataset: Annotated[str, typer.Option(
        help="Shipped dataset: satellite (36 numeric features, 6 land-cover classes) or reviews (5,000 Amazon "
             "fine-food reviews: text, great/other; TF-IDF + logistic regression).")] = "satellite",
    set_: SetOption = None,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs.")] = False,
) -> None:
    """A fresh workspace, a seed model, then CYCLES turns of the loop; prints one line per cycle and a learning curve."""
    from labelloop.apps.init import SHIPPED_DATASETS

    if dataset not in SHIPPED_DATASETS:
        _fail(ValueError(f"--dataset {dataset!r} is not shipped; allowed: {', '.join(SHIPPED_DATASETS)}"))
    ws = _workspace(workspace)
    _quiet_environment(ws.root, verbose)
    if vendor == "label-studio":
        _require_label_studio_sdk()  # before anything slow starts
    if ws.root.exists() and any(ws.root.iterdir()):
        _remove_demo_workspace(ws)
    from labelloop.apps.init import init_workspace, shipped_dataset_path
    from labelloop.config import ConfigError, Params

    started = time.perf_counter()
    try:
        overrides = parse_overrides(set_)
        export = (overrides.pop("export", {}) | {"vendor": vendor}
                  | ({"label_studio_url": label_studio_url} if label_studio_url else {}))
        source = {"source": str(shipped_dataset_path(dataset))} if dataset != "satellite" else {}
        # The demo lets the bandit choose each batch's strategy (select.strategy auto, paid on the audit sample that
        # select.audit_fraction draws): its lines show the arm, its reward and the audit estimate.
        overrides["select"] = DEMO_SELECT | overrides.get("select", {})
        params = Params().with_overrides(export=export, dataset=source | overrides.pop("dataset", {}), **overrides)
    except ConfigError as error:
        _fail(error)
    if vendor == "label-studio":
        _label_studio_token(params.export.label_studio_url)
    init_workspace(ws.root, params, retry=_retry_policy())
    _print_schema(ws)
    from labelloop.core.io import write_json

    write_json(ws.state_dir / DEMO_MARKER, {"created_by": "labelloop demo"})
    typer.echo(f"workspace {ws.root}: seed set of {params.dataset.seed_size} labels, "
               f"holdout {params.dataset.holdout_fraction:.0%} "
               f"of the shipped {dataset} dataset; estimator {ws.params().train.estimator}, "
               f"strategy {params.select.strategy}, batch {params.select.batch_size}")
    after_cycle = _label_studio_team(ws, params) if vendor == "label-studio" else None
    _run_cycles(ws, cycles, {}, after_cycle=after_cycle)
    from labelloop.apps.reports import plot_learning_curve
    from labelloop.history import load_history

    png = plot_learning_curve(ws)
    history = load_history(ws)
    first, last = history[0], history[-1]
    typer.echo(f"\nlearning curve: {png}")
    typer.echo(f"champion accuracy {first.champion_accuracy:.4f} → {last.champion_accuracy:.4f} "
               f"with {last.labels} labels, in {time.perf_counter() - started:.0f} s")
    typer.echo("\nNext:")
    # Quoted: a workspace path may hold spaces, `?` or `#`; a password in the tracking URI is never printed.
    typer.echo(f"  Prefect UI:    .venv/bin/labelloop ui -w {shlex.quote(str(ws.root))}"
               "   # the runs above, and Run → Custom run on any stage or the cycle")
    typer.echo(f"  MLflow UI:     .venv/bin/mlflow ui --backend-store-uri {shlex.quote(redact_uri(ws.tracking_uri))} --port 5000"
               "   # then http://127.0.0.1:5000")
    typer.echo(f"  data versions: .venv/bin/labelloop data versions --workspace {shlex.quote(str(ws.root))}"
               f"   (or git -C {shlex.quote(str(ws.registry_dir))} tag -n1)")
    if vendor == "label-studio":
        typer.echo(f"  Label Studio:  {redact_uri(params.export.label_studio_url)}"
                   f"   (projects 'labelloop {ws.workspace_id} batch …'; "
                   f"admin password in .labelstudio/admin-password; stop: bash {shlex.quote(str(_label_studio_script()))} stop)")


DEMO_SELECT = {"strategy": "auto"}  # --set select.strategy=... still wins


@app.command()
def cycle(
    workspace: WorkspaceOption = None,
    cycles: Annotated[int, typer.Option(min=1, help="How many cycles to run back to back.")] = 1,
    set_: SetOption = None,
    verbose: bool = False,
) -> None:
    """Run the full `active_learning_cycle` flow on a workspace."""
    from labelloop.core.lock import workspace_lock
    from labelloop.workspace import WorkspaceError

    ws = _workspace(workspace)
    _quiet_environment(ws.root, verbose)
    overrides = parse_overrides(set_)
    try:
        ws.require()
        # Taken before Prefect's temporary server starts, and held for every cycle: a second
        # `labelloop cycle` on this workspace exits at once instead of starting a second server on the
        # same Prefect database. The flow still takes its own lock (deployments, runs from the UI).
        with workspace_lock(ws, name="cycle-command"):
            _run_cycles(ws, cycles, overrides)
    except (WorkspaceError, RuntimeError, ValueError, OSError) as error:  # busy, vendor/remote/server down: one line
        _fail(error)


def _run_stage(flow_name: str, workspace: Path | None, set_: list[str] | None, verbose: bool, section: str | None):
    ws = _workspace(workspace)
    _quiet_environment(ws.root, verbose)
    overrides = parse_overrides(set_)
    params = _checked_params(ws, overrides)
    _use_prefect_server(ws)
    import labelloop.flows.stages as stages
    from labelloop.core.lock import workspace_lock

    flow = getattr(stages, f"{flow_name}_flow")
    try:
        # Taken before Prefect starts (a busy workspace fails at once); the flow re-enters it. Every stage
        # gets the whole resolved params, so `--set train.model_name=x select` scores with model x.
        with workspace_lock(ws):
            result = flow(str(ws.root), resolved=params)
    except Exception as error:  # noqa: BLE001 — a stage's user-facing failure: one clear line, non-zero exit
        _fail(error)
    summary = _summary(result)
    if summary:
        typer.echo(summary)
    typer.echo(_describe(result))


def _summary(result: Any) -> str | None:
    """The one line that says what a stage did — or, on a rerun, what it found already done."""
    from labelloop.domain.gate import GateDecision
    from labelloop.flows.stages import describe_training, describe_version
    from labelloop.stages.dataset import DatasetVersion
    from labelloop.stages.train import TrainResult

    if isinstance(result, DatasetVersion):
        return describe_version(result)
    if isinstance(result, TrainResult):
        return describe_training(result)
    if isinstance(result, GateDecision):
        return f"gate {result.label}: {'; '.join(result.reasons)}"
    return None


def _describe(result: Any) -> str:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(result) and not isinstance(result, type):
        return yaml.safe_dump(asdict(result), sort_keys=False).rstrip()
    if isinstance(result, list):
        return "\n".join(_describe(r) for r in result) or "(nothing to do)"
    return str(result)


def _stage_command(flow_name: str, section: str | None, doc: str):
    def command(workspace: WorkspaceOption = None, set_: SetOption = None, verbose: bool = False) -> None:
        _run_stage(flow_name, workspace, set_, verbose, section)

    command.__doc__ = doc
    return command


app.command("production")(_stage_command("production", "production",
                                         "Champion scores the next slice of traffic into the prediction log."))
app.command("capture")(_stage_command("capture", "capture",
                                      "Read new prediction-log rows, validate (GX), keep low-confidence ones in the pool."))
app.command("export")(_stage_command("export", "export", "Send selected batches to the annotation vendor."))
app.command("import")(_stage_command("import", "import", "Fetch, validate and aggregate the vendor's labels."))
app.command("dataset")(_stage_command("dataset", None,
                                      "Add imported labels to the labelled set as a new DVC version (tag data-vN)."))
app.command("train")(_stage_command("train", "train",
                                    "Train a challenger on the current data version (MLflow run + registered version)."))
app.command("gate")(_stage_command("gate", "gate", "Compare challenger with champion; promote only if the rules pass."))


@app.command("select")
def select_command(
    workspace: WorkspaceOption = None,
    pool: Annotated[Path | None, typer.Option(
        help="Select from this parquet pool (prediction-log format) instead of a workspace.")] = None,
    out: Annotated[Path | None, typer.Option(help="With --pool: where to write the batch parquet.")] = None,
    strategy: Annotated[str | None, typer.Option(help="Acquisition strategy (see `labelloop strategies`).")] = None,
    selector: Annotated[str | None, typer.Option(help="Batch selector: topk, ...")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option(min=0)] = None,
    set_: SetOption = None,
    verbose: bool = False,
) -> None:
    """Score candidates and write the next batch: the workspace's pool, or any pool file with --pool/--out."""
    overrides = parse_overrides(set_)
    given = {"strategy": strategy, "selector": selector, "batch_size": batch_size, "seed": seed}
    chosen = {k: v for k, v in given.items() if v is not None}
    if pool is not None:
        _select_pool_file(pool, out, chosen)
        return
    overrides.setdefault("select", {}).update(chosen)
    # JSON keeps each value's type through the SECTION.KEY=VALUE round trip (None stays null, not 'None').
    _run_stage("select", workspace, [f"select.{k}={json.dumps(v)}" for k, v in overrides["select"].items()] +
               [p for p in (set_ or []) if not p.startswith("select.")], verbose, "select")


def _select_pool_file(pool: Path, out: Path | None, chosen: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from labelloop.config import AUTO_STRATEGY, SelectParams
    from labelloop.domain.acquisition.pool import select_pool_to_file

    if out is None:
        _fail(ValueError("--pool needs --out FILE for the selected batch"))
    try:
        params = SelectParams(**chosen)
    except ValidationError as error:
        _fail(ValueError("; ".join(f"select.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())))
    if params.strategy == AUTO_STRATEGY:
        from labelloop.domain.acquisition import strategy_names

        _fail(ValueError(f"--strategy {AUTO_STRATEGY} needs a workspace (its bandit state and the audit items that pay "
                         f"the arms live there); with --pool choose one of: {', '.join(strategy_names())}"))
    if not pool.exists():
        _fail(FileNotFoundError(f"pool file {pool} does not exist"))
    try:
        result = select_pool_to_file(pool, out, params.strategy, params.batch_size, params.selector, params.seed,
                                     chunk_size=params.chunk_size)
    except (ValueError, OSError) as error:
        _fail(error)
    typer.echo(f"selected {result['n_selected']} of {result['n_candidates']} candidates with {params.strategy} "
               f"(seed {params.seed}) → {out}")
    typer.echo(f"seconds: {result['seconds']:.3f}; peak memory: {result['peak_memory_mib']:.0f} MiB")


@app.command()
def simulate(
    data: Annotated[Path, typer.Option(help="Labelled parquet/CSV.")],
    label_col: Annotated[str, typer.Option(help="Label column.")] = "label",
    strategies: Annotated[str, typer.Option(
        help="Comma-separated strategies, e.g. random,margin,hybrid.")] = "random,margin,hybrid",
    seed_size: Annotated[int, typer.Option(min=1)] = 50,
    batch_size: Annotated[int, typer.Option(min=1)] = 100,
    rounds: Annotated[int, typer.Option(min=0)] = 10,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    test_size: Annotated[float, typer.Option(min=0.01, max=0.99)] = 0.2,
    metric: Annotated[str, typer.Option(help="accuracy, macro_f1 or balanced_accuracy.")] = "accuracy",
    out: Annotated[Path, typer.Option(
        help="Output directory (curves.csv, summary.json, learning_curves.png).")] = Path("simulation"),
    selector: Annotated[str | None, typer.Option(help="Override the selector for every strategy.")] = None,
    params_file: Annotated[Path | None, typer.Option(
        "--params", help="params.yaml whose `train` and `select.hybrid` sections set the model and the hybrid mix.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI [default: sqlite in OUT].")] = None,
    id_col: Annotated[list[str] | None, typer.Option(help="A row identifier, never a feature (repeatable).")] = None,
    numeric_col: Annotated[list[str] | None, typer.Option(help="Read this column as numbers (repeatable).")] = None,
    categorical_col: Annotated[list[str] | None, typer.Option(help="Read this column as categories (repeatable).")] = None,
    text_col: Annotated[list[str] | None, typer.Option(help="Free text, vectorised by the model (repeatable).")] = None,
    drop_col: Annotated[list[str] | None, typer.Option(help="Do not use this column (repeatable).")] = None,
    audit_fraction: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Audit items per round as a share of the batch, estimated against the hidden truth "
        "[default: params' select.audit_fraction].")] = None,
) -> None:
    """Pool-based active-learning simulation on any labelled table: how many labels does each strategy save?

    Column roles are inferred as `labelloop init` infers them (printed first); the role options override them."""
    _quiet_environment(out.resolve())
    from labelloop.apps.simulate import SimulationConfig, run_simulation
    from labelloop.config import ConfigError, load_params

    try:
        params = load_params(params_file)
        config = SimulationConfig(
            data=str(data), label_col=label_col, strategies=[s.strip() for s in strategies.split(",") if s.strip()],
            seed_size=seed_size, batch_size=batch_size, rounds=rounds, repeats=repeats, test_size=test_size,
            metric=metric, out=str(out), selector=selector, train_params=params.train, hybrid=params.select.hybrid,
            bandit=params.select.bandit,
            audit_fraction=params.select.audit_fraction if audit_fraction is None else audit_fraction,
            audit_sample_rows=params.capture.audit_sample_rows,
            tracking_uri=tracking_uri,
            id_columns=[*params.schema_.id_columns, *(id_col or [])],
            numeric_columns=[*params.schema_.numeric_columns, *(numeric_col or [])],
            categorical_columns=[*params.schema_.categorical_columns, *(categorical_col or [])],
            text_columns=[*params.schema_.text_columns, *(text_col or [])],
            drop_columns=[*params.schema_.drop_columns, *(drop_col or [])],
        )
        config.validate()
        summary = run_simulation(config, echo=typer.echo)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        _fail(error)
    typer.echo(f"{'strategy':<22} {'labels_to_target':>16} {'savings_vs_random':>18} {'final':>7} {'aulc':>7}")
    for name, row in summary["strategies"].items():
        savings = row.get("savings_vs_random_pct")
        savings_text = "-" if savings is None else f"{savings:.0f}%{' (≥)' if row.get('savings_is_lower_bound') else ''}"
        typer.echo(f"{name:<22} {row.get('labels_to_target')!s:>16} {savings_text:>18} "
                   f"{row['final_value']:>7.4f} {row['aulc']:>7.4f}")
    if summary.get("audit"):
        audit = summary["audit"]
        typer.echo(f"audit: live accuracy within the audit's 90% interval in {audit['coverage']:.0%} of "
                   f"{audit['rounds']} rounds (mean width {audit['mean_width']:.3f}, mean error {audit['mean_error']:+.4f})")
    typer.echo(f"wrote {out}/curves.csv, {out}/summary.json, {out}/learning_curves.png")


@app.command()
def strategies() -> None:
    """List acquisition strategies and selectors with their cost."""
    from labelloop.config import AUTO_STRATEGY, BanditParams
    from labelloop.domain.acquisition import get_selector, get_strategy, selector_names, strategy_names

    typer.echo("strategies:")
    for name in strategy_names():
        spec = get_strategy(name)
        needs = f" (needs {', '.join(sorted(spec.needs))})" if spec.needs else ""
        typer.echo(f"  {name:<26} {spec.cost}{needs}")
    typer.echo(f"  {AUTO_STRATEGY:<26} a bandit (EXP3) drawing each batch's strategy from select.bandit.arms (default "
               f"{', '.join(BanditParams().arms)}), paid the accuracy gain on audit items; a workspace's select only")
    typer.echo("selectors:")
    for name in selector_names():
        typer.echo(f"  {name:<26} {get_selector(name).cost}")


@app.command()
def status(workspace: WorkspaceOption = None) -> None:
    """Champion, data versions, pool and batches of a workspace."""
    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    from labelloop.adapters import tracking, tracking_store, versioning
    from labelloop.batches import BatchStore, load_pool
    from labelloop.workspace import WorkspaceError

    try:
        ws.require()
    except WorkspaceError as error:
        _fail(error)
    params = ws.params()
    typer.echo(f"workspace: {ws.root}")
    typer.echo(f"data version: {versioning.current_data_tag(ws.registry_dir)} "
               f"(all: {', '.join(versioning.data_tags(ws.registry_dir))})")
    from labelloop.stages import dataset

    typer.echo(f"exclusions: {dataset.describe_exclusions(dataset.exclusions(ws))}")
    try:
        versioning.require_production_line(ws.registry_dir)
        typer.echo("registry: on its production line")
    except versioning.VersioningError as error:  # said here, before the next cycle refuses to start
        typer.secho(f"registry: {error}", fg=typer.colors.YELLOW)
    try:  # read-only, without MLflow (seconds to import): sqlite3 on the workspace's store, REST on a server
        aliases = tracking_store.aliases(tracking_store.reader(ws), params.train.model_name)
    except tracking.TrackingUnavailable as error:
        _fail(error)
    for alias in (tracking.CHAMPION, tracking.CHALLENGER, tracking.PREVIOUS):
        typer.echo(f"{alias}: {aliases.get(alias)}")
    typer.echo(f"pool: {len(load_pool(ws))} candidates")
    typer.echo(_prefect_line(ws))
    from labelloop.stages.capture import capture_status_line

    typer.echo(capture_status_line(ws))
    from labelloop.stages.monitor import status_lines

    for line in status_lines(ws):
        typer.echo(line)
    from labelloop.stages.audit import audit_status_line

    typer.echo(audit_status_line(ws))
    if params.autolabel.enabled or ws.state_dir.joinpath("autolabel.json").exists():
        from labelloop.stages.autolabel import status_line as autolabel_status_line

        typer.echo(autolabel_status_line(ws))
    for meta in BatchStore(ws).list():
        typer.echo(f"  {meta.batch_id}: {meta.status}, {meta.n_items} items, {meta.strategy}, "
                   f"labelled {meta.n_labelled}, in {meta.versioned_in}")
    from labelloop.history import load_history
    from labelloop.stages import gate

    history = load_history(ws)
    if len(history) > 1:
        report = gate.stop_rules_over(ws, history, params.gate)  # with the rules as params.yaml says now
        fired = "; ".join(report.reasons) if report.stop else "none fired"
        typer.echo(f"stop rules after cycle {history[-1].cycle}: {fired}"
                   + (" (gate.stop.halt: the next cycle buys no labels)" if report.stop and params.gate.stop.halt else ""))


def _prefect_line(ws) -> str:
    """Which Prefect API this workspace's commands use, and whether its background server runs."""
    from labelloop.flows import server  # no Prefect import: a state file, /proc and one health request
    from labelloop.tasks.environment import prefect_server_mode

    if os.environ.get("PREFECT_API_URL"):
        return f"prefect: {redact_uri(os.environ['PREFECT_API_URL'])} (PREFECT_API_URL)"
    state, process = server.describe(ws)
    line = f"prefect server: {state}" + (f" at {process.url}" if process is not None and state == "running" else "")
    try:
        ephemeral = prefect_server_mode() == "ephemeral"
    except ValueError as error:
        return f"{line} ({error})"
    if ephemeral:
        return f"{line} (LABELLOOP_PREFECT_SERVER=ephemeral: each command starts Prefect's temporary server)"
    return line if state == "running" else f"{line} (the next stage command or `labelloop ui` starts it)"


@data_app.command("versions")
def data_versions(
    tag: Annotated[str | None, typer.Argument(help="Show one version in detail: relabels, exclusions in force.")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """List data versions (tags) with their messages and what each rollback excluded."""
    from labelloop.adapters import versioning
    from labelloop.columns import ITEM_ID
    from labelloop.stages import dataset

    ws = _workspace(workspace)
    try:
        ws.require()
    except RuntimeError as error:
        _fail(error)
    tags = versioning.data_tags(ws.registry_dir)
    if tag is not None and tag not in tags:
        _fail(ValueError(f"unknown data tag {tag!r}; known: {', '.join(tags)}"))
    current = versioning.current_data_tag(ws.registry_dir)
    for each in [tag] if tag else tags:
        marker = "*" if each == current else " "
        typer.echo(f"{marker} {each:<10} {versioning.tag_message(ws.registry_dir, each).strip()}")
        for entry in dataset.exclusions_at(ws, each):
            if entry["excluded_in"] == each:
                undone = f", {len(entry['kept_labels'])} relabels undone" if entry.get("kept_labels") else ""
                typer.echo(f"{'':13}excluded {entry['batch_id']} ({entry['n_items']} items{undone}, "
                           f"rolled back to {entry['rolled_back_to']})")
    if tag:
        card = dataset.card_at(ws, tag)
        typer.echo(f"  rows: {card.get('rows')}; per batch: {card.get('per_batch')}")
        for relabel in card.get("relabels", []):
            typer.echo(f"  relabel {relabel[ITEM_ID]}: {relabel['old_label']} -> {relabel['new_label']} "
                       f"({relabel['batch_id']}; annotators {', '.join(relabel['annotators']) or 'unknown'})")
        typer.echo(f"  exclusions in force: {dataset.describe_exclusions(dataset.exclusions_at(ws, tag))}")


@data_app.command("rollback")
def data_rollback(
    tag: Annotated[str, typer.Argument(help="Data tag to restore, e.g. data-v2.")],
    workspace: WorkspaceOption = None,
    retrain: Annotated[bool, typer.Option(help="Then train a challenger on it and run the gate.")] = False,
) -> None:
    """Make the labelled set the version at TAG again (a new commit and tag; history kept).

    What it removes is excluded: later dataset runs never add it back (`labelloop data readmit` does)."""
    from labelloop.adapters import versioning
    from labelloop.core.lock import workspace_lock
    from labelloop.stages import dataset

    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    try:
        ws.require()
        with workspace_lock(ws):  # not while a cycle or a stage writes the registry
            versioning.recover_registry(ws.registry_dir)
            version = dataset.rollback(ws, tag, retry=_retry_policy())
    except (ValueError, RuntimeError) as error:  # unknown tag, off the production line, busy, remote down
        _fail(error)
    if not version.created:
        typer.echo(f"the labelled set already is {tag}'s ({version.tag}, {version.n_rows} rows); nothing changed")
    else:
        typer.echo(f"labelled set restored from {tag} as {version.tag} ({version.n_rows} rows)")
    for entry in version.excluded:
        undone = f", {entry['n_labels_kept']} relabels undone" if entry.get("n_labels_kept") else ""
        typer.echo(f"  excluded {entry['batch_id']} ({entry['n_items']} items{undone}); bring it back with "
                   f"`labelloop data readmit {entry['batch_id']}`")
    if retrain:
        _use_prefect_server(ws)
        from labelloop.flows.stages import gate_flow, train_flow

        try:
            with workspace_lock(ws):  # rollback → train → gate with no other run in between
                result = train_flow(str(ws.root))
                decision = gate_flow(str(ws.root), expected_challenger=result.version)
        except (ValueError, RuntimeError) as error:
            _fail(error)
        typer.echo(f"challenger v{result.version} on {result.data_tag}: gate {decision.label} — {'; '.join(decision.reasons)}")


@data_app.command("readmit")
def data_readmit(
    batch_id: Annotated[str, typer.Argument(help="A batch a rollback excluded (see `labelloop data versions`).")],
    workspace: WorkspaceOption = None,
) -> None:
    """Lift a rollback's exclusion of BATCH_ID: a new data version with its items back in the labelled set."""
    from labelloop.stages import dataset

    # Not excluded / unknown batch, off the production line, busy: one message.
    version = _change_registry(workspace, lambda ws, retry: dataset.readmit(ws, batch_id, retry=retry))
    typer.echo(f"re-admitted {batch_id} as {version.tag} ({version.n_rows} rows, +{version.n_new})")


def _change_registry(workspace: Path | None, change):
    """`change(ws, retry)` under the workspace lock (no cycle or stage writes the registry meanwhile), on a
    recovered registry; a user error (ValueError, RuntimeError) ends the command with its message."""
    from labelloop.adapters import versioning
    from labelloop.core.lock import workspace_lock

    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    try:
        ws.require()
        with workspace_lock(ws):
            versioning.recover_registry(ws.registry_dir)
            return change(ws, _retry_policy())
    except (ValueError, RuntimeError) as error:
        _fail(error)


autolabel_app = typer.Typer(help="Auto-labels (params.yaml `autolabel`): withdraw a cycle's.", no_args_is_help=True)
app.add_typer(autolabel_app, name="autolabel")


@autolabel_app.command("withdraw")
def autolabel_withdraw(
    workspace: WorkspaceOption = None,
    cycle: Annotated[int | None, typer.Option(help="The cycle whose auto-labels to withdraw.")] = None,
    batch: Annotated[str | None, typer.Option(help="Or one auto batch (auto-cNNNN-...), see `labelloop status`.")] = None,
) -> None:
    """Take a cycle's auto-labels out of the labelled set: a new data version without them (human labels untouched;
    `labelloop data readmit BATCH` brings them back). A rerun changes nothing."""
    from labelloop.stages import autolabel

    # Nothing to withdraw, off the production line, busy: one message.
    version = _change_registry(workspace, lambda ws, retry: autolabel.withdraw(ws, cycle=cycle, batch_id=batch,
                                                                               retry=retry))
    if not version.created:
        typer.echo(f"already withdrawn: {version.tag} ({version.n_rows} rows) has none of them; nothing changed")
        return
    for entry in version.excluded:
        typer.echo(f"  withdrew {entry['batch_id']} ({entry['n_items']} auto-labels)")
    typer.echo(f"labelled set without them: {version.tag} ({version.n_rows} rows)")


@data_app.command("checkout")
def data_checkout(
    tag: Annotated[str, typer.Argument(help="Data tag to check out, e.g. data-v3.")],
    to: Annotated[Path, typer.Option("--to", help="New or empty directory for the separate checkout.")],
    workspace: WorkspaceOption = None,
) -> None:
    """A separate checkout of the registry at TAG (git clone + dvc pull), for `dvc repro` / `dvc exp run`
    without touching the live registry the cycle runs from."""
    from labelloop.adapters import versioning

    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    try:
        ws.require()
        destination = versioning.checkout_to(ws.registry_dir, tag, to)
    except (ValueError, RuntimeError) as error:  # unknown tag, non-empty DIR, remote unreachable
        _fail(error)
    typer.echo(f"{tag} checked out in {destination} (branch from-{tag}; data pulled from the workspace's DVC remote)")
    typer.echo(f"  cd {destination} && dvc repro                 # model/, metrics.json, plots/ for {tag}")
    typer.echo("  dvc exp run -S train.max_depth=8 && dvc exp show   # a variant, side by side")
    typer.echo("  (with the labelloop venv on PATH: the stages run `labelloop pipeline ...`)")


@model_app.command("rollback")
def model_rollback(
    version: Annotated[str | None, typer.Argument(
        help="Version number or alias to make champion [default: one step back along `labelloop model history`].")] = None,
    reason: Annotated[str, typer.Option(
        help="Why; recorded in the champion history and on the demoted version.")] = "manual rollback",
    workspace: WorkspaceOption = None,
) -> None:
    """Make an earlier model champion: one step back along the champion history (twice: two steps, never forward)."""
    from labelloop.core.lock import workspace_lock
    from labelloop.stages import gate

    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    try:
        ws.require()
        name = ws.params().train.model_name
        with workspace_lock(ws):  # not while a cycle's gate moves the same alias
            left, target = gate.rollback(ws, name, reason, version)
    except (ValueError, RuntimeError) as error:  # unknown version/alias, nothing to step back to, busy, server down
        _fail(error)
    if left == target:
        typer.echo(f"version {target} is already champion; nothing changed")
    else:
        typer.echo(f"champion is now version {target} (was {left}); reason recorded: {reason}")


@model_app.command("history")
def model_history(workspace: WorkspaceOption = None) -> None:
    """Every champion, newest first: when, by what (gate, rollback, resume), why, and its data version."""
    from labelloop.adapters import tracking

    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    try:
        ws.require()
        name = ws.params().train.model_name
        history = tracking.champion_history(ws, name)
        current = tracking.alias_version(ws, name, tracking.CHAMPION)
    except (ValueError, RuntimeError) as error:
        _fail(error)
    if not history:
        typer.echo(f"model {name!r} has had no champion yet")
        return
    typer.echo(f"champions of {name!r}, newest first (* = current): version, since, moved by, data version, replaced, why")
    for position, change in enumerate(reversed(history)):
        marker = "*" if position == 0 and change.version == current else " "
        when = change.at or "(before the history was kept)"
        replaced = f"replaced {change.replaced}" if change.replaced else "first"
        typer.echo(f"{marker} version {change.version:<4} {when:<25}  {change.by:<10} {change.data_tag or '-':<10} "
                   f"{replaced:<12} why: {change.reason or '-'}")


@app.command()
def serve(
    workspace: WorkspaceOption = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    model_name: Annotated[str | None, typer.Option(
        help="Registered model to serve (default: the workspace's train.model_name).")] = None,
    flush_rows: Annotated[int, typer.Option(min=1, help="Write a log part every N predictions...")] = 1000,
    flush_seconds: Annotated[float, typer.Option(min=0.01, help="...or when the oldest buffered one is this old.")] = 5.0,
    alias_ttl_seconds: Annotated[float, typer.Option(min=0.01, help="How often to look for a new champion.")] = 5.0,
    max_rows_per_request: Annotated[int, typer.Option(min=1, help="Requests with more rows get 422.")] = 10_000,
    mode: Annotated[Literal["durable", "buffered"], typer.Option(help=(
        "durable: answer a request only once its rows are fsynced (group commit; a kill loses no answered row); "
        "buffered: keep rows in memory until a flush (a hard kill loses them)."))] = "durable",
    commit_wait_ms: Annotated[float, typer.Option(min=0, max=1000, help=(
        "durable: longest wait for requests being scored to join a group commit."))] = 2.0,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Request bodies larger than this get 413.")] = 16 * 1024 * 1024,
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug", "trace"], typer.Option(
        help="Log level of the server and of labelloop's own messages (stderr).")] = "info",
) -> None:
    """HTTP prediction service for models:/NAME@champion; every prediction is appended to the prediction log."""
    import logging

    ws = _workspace(workspace)
    _quiet_environment(ws.root, verbose=True)
    from labelloop.apps.serving import run_server
    from labelloop.workspace import WorkspaceError

    try:
        ws.require()
    except WorkspaceError as error:
        _fail(error)
    level = logging.DEBUG if log_level == "trace" else getattr(logging, log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(ws, host=host, port=port, model_name=model_name, flush_rows=flush_rows, flush_seconds=flush_seconds,
               alias_ttl_seconds=alias_ttl_seconds, max_rows_per_request=max_rows_per_request, log_level=log_level,
               mode=mode, commit_wait_ms=commit_wait_ms, max_body_bytes=max_body_bytes)


@app.command()
def deploy(
    workspace: WorkspaceOption = None,
    name: Annotated[str, typer.Option(help="Deployment name (flow/NAME).")] = "production",
    work_pool: Annotated[str, typer.Option(envvar="WORK_POOL", help="Prefect process work pool.")] = "labelloop",
    mode: Annotated[Literal["stages", "cycle"], typer.Option(
        help="stages: per-stage schedules active, cycle schedule paused; cycle: the reverse.")] = "stages",
    timezone: Annotated[str, typer.Option(help="Time zone of the schedules.")] = "UTC",
    paused: Annotated[bool, typer.Option("--paused", help="Register every schedule inactive.")] = False,
    params_file: Annotated[Path | None, typer.Option(
        "--params", help="params.yaml for a new workspace (default: the embedded defaults).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="SECTION.KEY=VALUE for a new workspace (repeatable).")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Register only these flows (repeatable): production, capture, "
                                                        "select, export, import, retrain, dataset, train, gate, cycle.")] = None,
) -> None:
    """Register every deployment of a workspace (created if missing) with the Prefect API at $PREFECT_API_URL."""
    if not os.environ.get("PREFECT_API_URL"):
        _fail(ValueError("PREFECT_API_URL is not set: start the stack (make stack-up) and `source .stack/env`, "
                         "or use `make deploy`"))
    from labelloop.flows.deploy import SPECS, register

    unknown = sorted(set(only or []) - set(SPECS))
    if unknown:
        _fail(ValueError(f"--only {', '.join(unknown)}: unknown flow; allowed: {', '.join(sorted(SPECS))}"))
    created = register(_workspace(workspace), name, work_pool, mode, timezone, paused, params_file, parse_overrides(set_),
                       only, retry=_retry_policy())
    api = os.environ["PREFECT_API_URL"].removesuffix("/api")
    for full_name, deployment_id in created.items():
        typer.echo(f"deployment {full_name:<36} {api}/deployments/deployment/{deployment_id}")
    typer.echo(f"{len(created)} deployments on work pool {work_pool!r}; start a worker: "
               f"prefect worker start --pool {work_pool}  (make deploy does)")


server_app = typer.Typer(help="The workspace's own Prefect server (started by the first stage command, reused after).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")


def _stop_background(ws) -> list[str]:
    """Stop the workspace's `labelloop ui` process, then its Prefect server; one line per process."""
    from labelloop.flows import server, ui

    lines = []
    for name, stop in (("deployment server (labelloop ui)", lambda: ui.stop(ws)), ("Prefect server", lambda: server.stop(ws)[0])):
        outcome = stop()
        if outcome == "stale":
            outcome = "not running (removed the stale record of a process that is gone or now another program's)"
        lines.append(f"{name}: {outcome}")
    return lines


@server_app.command("start")
def server_start(workspace: WorkspaceOption = None) -> None:
    """Start the workspace's Prefect server in the background (or find the one running); prints its URL."""
    from labelloop.flows import server

    ws = _workspace(workspace)
    try:
        ws.require()
        process, started = server.ensure(ws)
    except (ValueError, RuntimeError) as error:
        _fail(error)
    typer.echo(f"Prefect server {'started' if started else 'already running'} at {process.url} (pid {process.pid}; "
               f"PREFECT_HOME {ws.prefect_home}; log {process.log})")


@server_app.command("stop")
def server_stop(workspace: WorkspaceOption = None) -> None:
    """Stop the workspace's Prefect server and the `labelloop ui` process serving its deployments."""
    ws = _workspace(workspace)
    try:
        ws.require()
        lines = _stop_background(ws)
    except (ValueError, RuntimeError) as error:
        _fail(error)
    for line in lines:
        typer.echo(line)


@server_app.command("status")
def server_status(workspace: WorkspaceOption = None) -> None:
    """Whether the workspace's Prefect server (and `labelloop ui`'s deployment server) runs; changes nothing."""
    from labelloop.flows import server, ui

    ws = _workspace(workspace)
    try:
        ws.require()
    except (ValueError, RuntimeError) as error:
        _fail(error)
    state, process = server.describe(ws)
    where = f" at {process.url} (pid {process.pid}, since {process.started_at}; log {process.log})" if process else ""
    typer.echo(f"Prefect server: {state}{where}")
    state, process = server.describe(ws, ui.UI)
    typer.echo(f"deployment server (labelloop ui): {state}" + (f" (pid {process.pid}; log {process.log})" if process else ""))
    if os.environ.get("PREFECT_API_URL"):
        typer.echo(f"note: PREFECT_API_URL is set ({redact_uri(os.environ['PREFECT_API_URL'])}): commands in this shell use "
                   "that API, not the workspace's server")


@app.command()
def ui(workspace: WorkspaceOption = None) -> None:
    """The Prefect UI on the workspace's own server, with every stage, retrain and the cycle deployed and served
    (no work pool, no worker): start the server and the deployment server if needed, print the URLs, return."""
    from labelloop.flows import server
    from labelloop.flows import ui as served

    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    try:
        ws.require()
        process, _ = server.ensure(ws)
        typer.echo(f"Prefect UI: {process.url}  (server pid {process.pid})")
        deployments, started = served.ensure_served(ws, process)
    except (ValueError, RuntimeError) as error:
        _fail(error)
    what = "now served" if started else "already served"
    typer.echo(f"{len(deployments)} deployments {what} by a background process (log {server.log_path(ws, served.UI)}):")
    for flow_name, deployment_id in sorted(deployments.items()):
        typer.echo(f"  {flow_name + '/' + served.DEPLOYMENT_NAME:<32} {process.url}/deployments/deployment/{deployment_id}")
    cycle_id = deployments.get("active_learning_cycle")
    if cycle_id:
        typer.echo(f"custom cycle run (fields left empty = params.yaml now): {process.url}/deployments/deployment/{cycle_id}/run")
    typer.echo(f"stop both: labelloop server stop -w {shlex.quote(str(ws.root))}")


@app.command()
def lineage(
    version: Annotated[str | None, typer.Argument(help="Model version number or alias [default: champion].")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Where a model version comes from: data tag, batches (strategy, seed, vendor, agreement), params, gate decision."""
    from labelloop.apps.lineage import lineage as model_lineage

    ws = _workspace(workspace)
    _quiet_environment(ws.root)
    try:
        ws.require()
        info = model_lineage(ws, ws.params().train.model_name, version)
    except (ValueError, RuntimeError) as error:
        _fail(error)
    typer.echo(yaml.safe_dump(info, sort_keys=False, allow_unicode=True).rstrip())


pipeline_app = typer.Typer(help="DVC pipeline stages over a registry (dvc.yaml runs these).", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
RegistryOption = Annotated[Path, typer.Option("--registry", help="The workspace's registry directory (dvc.yaml's folder).")]


@pipeline_app.command("validate")
def pipeline_validate(registry: RegistryOption = Path(".")) -> None:
    """Great Expectations suite on the labelled set (+ no holdout overlap) → reports/validation.json."""
    _quiet_environment(registry.resolve().parent)
    from labelloop.stages import train as pipeline

    try:
        report = pipeline.stage_validate(registry.resolve())
    except (pipeline.DataValidationError, FileNotFoundError) as error:
        _fail(error)
    typer.echo(f"labelled set valid: {report['rows']} rows")


@pipeline_app.command("train")
def pipeline_train(registry: RegistryOption = Path(".")) -> None:
    """Fit the model on data/labeled.parquet with params.yaml `train` → model/."""
    _quiet_environment(registry.resolve().parent)
    from labelloop.stages import train as pipeline

    typer.echo(f"model written to {pipeline.stage_train(registry.resolve())}")


@pipeline_app.command("evaluate")
def pipeline_evaluate(registry: RegistryOption = Path(".")) -> None:
    """Holdout metrics → metrics.json, plots/confusion.csv, plots/calibration.csv."""
    _quiet_environment(registry.resolve().parent)
    from labelloop.stages import train as pipeline

    metrics = pipeline.stage_evaluate(registry.resolve())
    typer.echo(" ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.startswith("recall.")))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
