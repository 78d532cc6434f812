"""Leader election on a Lease, so that of several operator replicas only one acts."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable

from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)


def run_as_leader(name: str, namespace: str, work: Callable[[], None]) -> None:
    """Block until this process holds the Lease, then run `work`; exit when the Lease is lost.

    Exiting (not pausing) on loss is deliberate: the pod restarts clean and campaigns again,
    and no half-done reconcile continues beside the new leader.
    """
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    def lost() -> None:
        log.error("lost the leader Lease %s/%s; exiting", namespace, name)
        sys.stdout.flush()
        os._exit(1)

    config = electionconfig.Config(
        LeaseLock(name, namespace, identity),
        lease_duration=15,
        renew_deadline=10,
        retry_period=2,
        onstarted_leading=work,
        onstopped_leading=lost,
    )
    log.info("campaigning for the Lease %s/%s as %s", namespace, name, identity)
    leaderelection.LeaderElection(config).run()
