"""moto's server with DynamoDB's write atomicity.

DynamoDB applies a conditional write atomically: of two writes conditioned on one version, exactly
one succeeds. moto's server answers requests on many threads, and its PutItem, UpdateItem,
DeleteItem and TransactWriteItems check the condition and then write, with nothing between the
two, so two racing writes can both pass (seen in CI: both of two `version = 1` puts succeeded).
This runs the same application as `moto_server` (same arguments) and serialises DynamoDB's write
operations, and only those: reads, SQS long polls and every other service stay concurrent.
"""

import sys
import threading

from moto import server

WRITES = {
    "DynamoDB_20120810.PutItem",
    "DynamoDB_20120810.UpdateItem",
    "DynamoDB_20120810.DeleteItem",
    "DynamoDB_20120810.BatchWriteItem",
    "DynamoDB_20120810.TransactWriteItems",
    "DynamoDB_20120810.ExecuteStatement",
    "DynamoDB_20120810.ExecuteTransaction",
    "DynamoDB_20120810.BatchExecuteStatement",
}


class AtomicWrites:
    """WSGI middleware: one DynamoDB write at a time, the whole answer produced under the lock."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        # `moto_server` sets this on its application; keep the attribute reachable.
        self.debug = getattr(app, "debug", False)

    def __call__(self, environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET") not in WRITES:
            return self.app(environ, start_response)
        with self.lock:
            # Drain the body while locked: a lazily produced answer must not escape the lock.
            return list(self.app(environ, start_response))


_dispatcher = server.DomainDispatcherApplication


def _atomic_dispatcher(create_app):
    return AtomicWrites(_dispatcher(create_app))


if __name__ == "__main__":
    server.DomainDispatcherApplication = _atomic_dispatcher
    server.main(sys.argv[1:])
