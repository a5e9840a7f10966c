"""Named deployment presets, in one place (as Ray's serve_workloads does).

A preset sizes each deployment of the application; `sidestep serve --preset NAME` picks one.
"""

from __future__ import annotations

# how a request that finds every search replica busy and the queue full is answered (by the replica
# itself under direct ingress, by the proxy with several replicas; see serving/run.py)
BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}

PRESETS: dict[str, dict[str, dict]] = {
    # one 2-core machine: the search replica is the HTTP ingress and owns the encoder and indexes.
    # Backpressure: past max_ongoing_requests busy and max_queued_requests waiting, the replica refuses a
    # request at once with 503 + Retry-After (BACKPRESSURE), never a timeout.
    "local": {
        "search": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 16,
                   "max_queued_requests": 32, "backpressure_config": BACKPRESSURE,
                   "health_check_period_s": 5, "health_check_timeout_s": 30},
        "recommend": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 16,
                      "max_queued_requests": 64,
                      "health_check_period_s": 5, "health_check_timeout_s": 30},
        # batches concurrent searches' candidate lists into one forward pass (@serve.batch)
        "verifier": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 32,
                     "max_queued_requests": 64, "health_check_period_s": 5, "health_check_timeout_s": 30},
    },
    # the same machine with one search replica more than it has cores (3 on 2), so that one can die without
    # the endpoint going dark or its capacity falling: each replica encodes on one thread, so 2 replicas
    # on 2 cores left the survivor of a kill one core for 70% of the pair's load while its replacement
    # started (653 of 2,456 requests failed after a retry in a 1-minute soak; with 3: 0 of 2,228). The
    # proxy's queue (max_queued_requests is per caller: here the proxy) stays short, so an overload is
    # answered with 503 at once instead of waiting (benchmarks/soak.py). The CPUs declared (1.4 of 2) leave room
    # for a replacement while a replica that failed its health check is still stopping.
    "replicated": {
        "search": {"num_replicas": 3, "ray_actor_options": {"num_cpus": 0.3}, "max_ongoing_requests": 16,
                   "max_queued_requests": 32, "backpressure_config": BACKPRESSURE,
                   "health_check_period_s": 2, "health_check_timeout_s": 30},
        "recommend": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.2}, "max_ongoing_requests": 16,
                      "max_queued_requests": 64, "health_check_period_s": 5, "health_check_timeout_s": 30},
        "verifier": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.3}, "max_ongoing_requests": 32,
                     "max_queued_requests": 64, "health_check_period_s": 5, "health_check_timeout_s": 30},
    },
    # tests: smallest footprint, fast health checks
    "test": {
        "search": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 8,
                   "max_queued_requests": 16, "backpressure_config": BACKPRESSURE,
                   "health_check_period_s": 2, "health_check_timeout_s": 30},
        "recommend": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 8,
                      "max_queued_requests": 16,
                      "health_check_period_s": 2, "health_check_timeout_s": 30},
        "verifier": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 16,
                     "max_queued_requests": 16, "health_check_period_s": 2, "health_check_timeout_s": 30},
    },
    # a cluster node with spare cores: the proxy spreads requests over more search replicas
    "cluster": {
        "search": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 8, "target_ongoing_requests": 4},
                   "ray_actor_options": {"num_cpus": 2}, "max_ongoing_requests": 16, "max_queued_requests": 32,
                   "backpressure_config": BACKPRESSURE, "health_check_period_s": 10, "health_check_timeout_s": 60},
        "recommend": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4},
                      "ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 16, "max_queued_requests": 64,
                      "health_check_period_s": 10, "health_check_timeout_s": 60},
        "verifier": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
                     "ray_actor_options": {"num_cpus": 2}, "max_ongoing_requests": 32, "max_queued_requests": 64,
                     "health_check_period_s": 10, "health_check_timeout_s": 60},
    },
}


def preset(name: str) -> dict[str, dict]:
    if name not in PRESETS:
        raise ValueError(f"unknown serving preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
