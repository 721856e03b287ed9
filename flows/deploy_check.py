"""The ``prefect deploy`` build step of ``prefect.yaml``: no deployment registered with a credential.

A Prefect server refuses a deployment, or a flow run of one, whose parameters carry a credential
(the flows' parameter schemas hold the refusal: :class:`flows.params.CredentialFree`), but when it
refuses the creation of a deployment its answer repeats the request, credential and all, and
``prefect deploy`` prints it; and it does not check the parameters of a deployment's schedules
and triggers at all (the automation of a trigger stores them as given). This step runs before
``prefect deploy`` registers anything: it checks the parameters of every deployment in the file,
and of their schedules and triggers, against the same schemas, with the environment filled in as
``prefect deploy`` fills it, and fails the deploy with one line per offending parameter, naming
it, never its value.

Which deployments it checks: those the ``prefect deploy`` command line selects (every one for
``--all``). Prefect runs the build section in its own process once per deployment, just before it
registers that deployment, and gives a step no word of which one (its inputs are templated from
the environment, blocks, variables and earlier steps' outputs only), so the step reads the
selection from the command line (``sys.argv``), each time the whole selection: ``prefect deploy
-n a -n b`` with a credential in ``b`` fails in ``a``'s build step, before ``a`` is registered.
Where it cannot read the command line it checks every deployment (:func:`deploy_selection`).

The parameters the command line gives (``--param key=value``, ``--params '{...}'``) are checked
too, merged into each selected deployment's as Prefect merges them, and each of their texts on its
own (:func:`command_line_credentials`): the server stores a parameter the flow does not have
unchecked, and its refusal of one it checks repeats the request.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from flows.params import CREDENTIAL_HELP, CREDENTIAL_REFUSAL, CredentialParameterError
from pipelines.redaction import has_credentials


def _parameter_schema(entrypoint: str) -> dict[str, Any]:
    """The parameter schema ``prefect deploy`` publishes for the flow at ``entrypoint``
    (``path.py:function``, relative to the working directory, as in ``prefect.yaml``)."""
    path, _, function = entrypoint.rpartition(":")
    return _schema_of(f"{Path(path).resolve()}:{function}")


@cache
def _schema_of(entrypoint: str) -> dict[str, Any]:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow: Any = load_flow_from_entrypoint(entrypoint)
    return parameter_schema(flow).model_dump(exclude_unset=True)


def credential_parameters(parameters: dict[str, Any], entrypoint: str) -> list[str]:
    """The parameters (``params.out``, ``params.cubes[0]``) that the parameter schema of the flow at
    ``entrypoint`` refuses as credentials; other schema errors are the server's to report."""
    from prefect.utilities.schema_tools import validate

    errors = validate(parameters, _parameter_schema(entrypoint), ignore_required=True)
    found = [
        e.json_path.removeprefix("$.")
        for e in errors
        if e.validator == "const" and e.validator_value == CREDENTIAL_REFUSAL
    ]
    return sorted(set(found))


@dataclass(frozen=True)
class DeploySelection:
    """The deployments of a ``prefect.yaml`` that a ``prefect deploy`` command line deploys.

    ``every``: all of them (``--all``, or a command line :func:`deploy_selection` cannot narrow);
    otherwise those ``names`` match, the ``--name`` values as given (``embed-local``,
    ``embed/embed-local``, ``embed-*``); ``prefect_file``: its ``--prefect-file``; ``param`` and
    ``params``: the parameters it gives them, each ``--param`` value (``key=value``) and each
    ``--params`` value (a JSON object), as given."""

    names: tuple[str, ...] = ()
    every: bool = True
    prefect_file: str = "prefect.yaml"
    param: tuple[str, ...] = ()
    params: tuple[str, ...] = ()

    def picks(self, deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``deployments`` (``prefect.yaml``'s, as written) that ``prefect deploy`` deploys,
        matched by name as it matches them; a superset where deployments of two flows share a
        name (the flow part of ``flow/name`` is not compared). The only deployment of a file is
        deployed whatever one name is given (Prefect renames it), so it is always picked."""
        if self.every or (len(deployments) == 1 and len(self.names) <= 1):
            return deployments
        return [d for d in deployments if any(_matches(n, d.get("name")) for n in self.names)]

    def parameters(self) -> dict[str, Any]:
        """The parameters the command line sets, as Prefect 3.9 reads them (``prefect/cli/deploy/
        _config.py``): each ``--param`` value split at its first ``=``, the value parsed as JSON
        where it parses, else the text (``out=s3://b/x``: ``{"out": "s3://b/x"}``; the key is not
        split at dots; a later one wins), then each ``--params`` object. Prefect updates the
        deployment's top-level parameters with these (a shallow update) before it fills in
        ``{{ $VAR }}``, where it applies them (to one deployment; it ignores them for several),
        and there refuses, before any build step, ``--param`` and ``--params`` together and most
        values it cannot read; what is not readable here adds nothing
        (:func:`command_line_credentials` checks every text as it is)."""
        found: dict[str, Any] = {}
        for text in self.param:
            key, equals, value = text.partition("=")
            if equals:
                found[key] = _json_or_text(value)
        for text in self.params:
            value = _json_or_text(text)
            if isinstance(value, dict):
                found.update(value)
        return found


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _texts(value: Any) -> list[str]:
    """The strings in ``value`` (parsed JSON): itself, the keys and values of objects, the items of
    arrays, at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _texts(v)]
    return []


def _matches(pattern: str, name: object) -> bool:
    """Whether a ``--name`` value selects the deployment ``name``: exact, ``*`` any text."""
    wanted = pattern.split("/", 1)[-1]
    if "*" not in pattern:
        return wanted == name
    return isinstance(name, str) and re.fullmatch(re.escape(wanted).replace(r"\*", ".*"), name) is not None


def _is_prefect_cli(program: str) -> bool:
    """Whether ``sys.argv[0]`` is the ``prefect`` command (its script or ``python -m prefect``)."""
    path = Path(program)
    return path.stem == "prefect" or (path.name == "__main__.py" and path.parent.name == "prefect")


def deploy_selection(argv: Sequence[str]) -> DeploySelection:
    """What the command line ``argv`` deploys, if it is ``prefect [--profile p] deploy ...``, and
    the parameters it gives; every deployment otherwise, or with ``--all``, no ``--name``, or
    ``--`` (after which nothing is read).

    Reads only Prefect's public options, in every form its parser takes (``-n a``, ``-na``,
    ``-n=a``, ``--name a``, ``--name=a``, ``--all``, ``--prefect-file f``, ``--param k=v``,
    ``--param=k=v``, ``--params v``, ``--params=v``, each repeated), and takes any form of
    ``--all`` (``--all=false``, ``--no-all``) for ``--all``: it may select more than Prefect
    deploys, never less (Prefect's parser takes no option value that starts with ``-`` but a
    number, so no other option's value hides a name or a parameter)."""
    every = DeploySelection()
    if not argv or not _is_prefect_cli(argv[0]):
        return every
    tokens = list(argv[1:])
    at = 0  # session options before the command: only --profile / -p take a value
    while at < len(tokens) and tokens[at].startswith("-"):
        at += 2 if tokens[at] in ("--profile", "-p") else 1
    if at >= len(tokens) or re.sub("[-_]", "", tokens[at]).lower() != "deploy":
        return every
    names: list[str] = []
    given: dict[str, list[str]] = {"--param": [], "--params": []}
    prefect_file = every.prefect_file
    deploy_all = False
    rest = iter(tokens[at + 1 :])
    for token in rest:
        option, equals, value = token.partition("=")
        if token == "--":
            deploy_all = True
            break
        if option in ("--all", "--no-all"):
            deploy_all = True
        if option in ("-n", "--name", "--prefect-file", *given) and not equals:
            value = next(rest, "")
        elif token.startswith("-n") and not token.startswith("--"):  # -na, -n=a
            option, value = "-n", token[2:].removeprefix("=")
        if option in ("-n", "--name"):
            names.append(value)
        elif option == "--prefect-file":
            prefect_file = value
        elif option in given:
            given[option].append(value)
    return DeploySelection(
        tuple(names),
        every=deploy_all or not names,
        prefect_file=prefect_file,
        param=tuple(given["--param"]),
        params=tuple(given["--params"]),
    )


def command_line_credentials(selection: DeploySelection) -> list[str]:
    """The ``--param`` and ``--params`` values of ``selection`` that carry a credential
    (:func:`~pipelines.redaction.has_credentials`) in their text or any string of their JSON, each
    ``{{ $VAR }}`` filled from this process's environment as ``prefect deploy`` fills it: named
    ``--param out`` (``--param #2``, its place, where the key is no plain name) or ``--params``,
    never by value. Whatever the deployment and its flow's parameters, so also where Prefect would
    not apply them (more than one deployment) or the flow has no such parameter."""
    from prefect.utilities.templating import apply_values

    env = dict(os.environ)

    def carries(text: str) -> bool:
        return any(
            has_credentials(t)
            for value in (text, _json_or_text(text))
            for t in _texts(apply_values(value, env, remove_notset=False))
        )

    found = []
    for place, text in enumerate(selection.param, start=1):
        key, equals, value = text.partition("=")
        if carries(text) or (equals and carries(value)):
            plain = re.fullmatch(r"[A-Za-z_][\w.-]{0,63}", key) and not has_credentials(key)
            found.append(f"--param {key if plain else f'#{place}'}")
    found += ["--params" for text in selection.params if carries(text)]
    return list(dict.fromkeys(found))


def deployment_credentials(
    prefect_file: str | Path = "prefect.yaml", argv: Sequence[str] = ()
) -> dict[str, list[str]]:
    """By deployment name, the parameters of ``prefect_file`` that carry a credential
    (``params.out``, ``trigger 0: params.cubes``, ``schedule 1: ...``), ``{{ $VAR }}`` filled from
    this process's environment as ``prefect deploy`` fills it: of the deployments the ``prefect
    deploy`` command line ``argv`` deploys, every one where ``argv`` is not such a command line
    or names another ``--prefect-file``; with the parameters ``argv`` gives merged in as Prefect
    merges them (into each deployment, though Prefect applies them to one deployment alone), and
    under ``command line`` those of its ``--param``/``--params`` values that carry one
    (:func:`command_line_credentials`: ``--param out``)."""
    import yaml
    from prefect.utilities.templating import apply_values

    config = yaml.safe_load(Path(prefect_file).read_text())
    selection = deploy_selection(argv)
    if Path(selection.prefect_file).resolve() != Path(prefect_file).resolve():
        selection = DeploySelection(param=selection.param, params=selection.params)
    given = selection.parameters()
    found: dict[str, list[str]] = {}
    for raw in selection.picks(config.get("deployments") or []):
        if given:  # as prefect deploy: a shallow update, before {{ $VAR }} is filled in
            own = raw.get("parameters")
            raw = {**raw, "parameters": {**(own if isinstance(own, dict) else {}), **given}}
        # a dict: remove_notset=False leaves an unset {{ $VAR }} as written, as prefect deploy does
        deployment = cast(dict[str, Any], apply_values(raw, dict(os.environ), remove_notset=False))
        sources = [("", deployment.get("parameters"))]
        for kind in ("schedule", "trigger"):
            sources += [
                (f"{kind} {i}: ", s.get("parameters")) for i, s in enumerate(deployment.get(f"{kind}s") or [])
            ]
        bad = [
            f"{where}{name}"
            for where, parameters in sources
            if parameters
            for name in credential_parameters(parameters, deployment["entrypoint"])
        ]
        if bad:
            found[str(deployment.get("name"))] = bad
    if bad_given := command_line_credentials(selection):
        found["command line"] = bad_given
    return found


def refuse_credentials(
    prefect_file: str = "prefect.yaml", argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """The build step: raises :class:`~flows.params.CredentialParameterError` (one line, names
    only) if a parameter of a deployment that the command line (``argv``, default ``sys.argv``: the
    ``prefect deploy`` running the step) deploys from ``prefect_file``, or one the command line
    gives (``--param``, ``--params``), carries a credential; ``{}`` (no step outputs) if none."""
    found = deployment_credentials(prefect_file, sys.argv if argv is None else argv)
    if found:
        where = "; ".join(f"{name} ({', '.join(bad)})" for name, bad in found.items())
        raise CredentialParameterError(
            f"{prefect_file}: parameters carry a credential, so nothing was deployed: {where}; "
            f"{CREDENTIAL_HELP}"
        )
    return {}
