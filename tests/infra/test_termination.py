"""The gpu work pool's flow-run pods get a termination grace period that outlasts what Prefect's
supervisor does on SIGTERM (infra/README.md, step 4): with Kubernetes' default 30 s the pod's
SIGKILL came before the supervisor's own 30 s wait for the flow process had ended, and before
its rescheduling API calls had finished when the API was slow."""

from __future__ import annotations

import inspect

from tests.infra.test_infra import _gpu_pool, _pool_defaults, _rendered_gpu_manifest


def _supervisor_kill_grace_s() -> float:
    """How long ``prefect flow-run execute`` waits for its flow process after a graceful SIGTERM
    before it SIGKILLs it (its process manager's ``kill`` default, which ``execute`` uses)."""
    from prefect.runner._process_manager import ProcessManager

    return float(inspect.signature(ProcessManager.kill).parameters["grace_seconds"].default)


def test_gpu_pool_pods_outlast_the_supervisors_shutdown() -> None:
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT

    template = _gpu_pool()
    spec = template["variables"]["properties"]["termination_grace_period_seconds"]
    assert spec["type"] == "integer" and spec["default"] == 180
    pod = _rendered_gpu_manifest()["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert isinstance(grace, int) and grace == _pool_defaults(template)["termination_grace_period_seconds"]
    # the rescheduling API calls (each bounded by the request timeout) and then the supervisor's
    # wait for its flow process both fit before the pod's SIGKILL
    assert grace > _supervisor_kill_grace_s() + float(PREFECT_API_REQUEST_TIMEOUT.value())


def test_a_deployment_can_change_the_grace_period() -> None:
    from prefect.utilities.templating import apply_values

    template = _gpu_pool()
    values = {**_pool_defaults(template), "termination_grace_period_seconds": 600}
    rendered = apply_values(template["job_configuration"], values)
    assert rendered["job_manifest"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600
