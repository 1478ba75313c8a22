#!/usr/bin/env bash
# A one-machine Ray cluster for gemini_ray: a head bound to loopback, token authentication on.
#
#   clusters/local.sh                                 # start the head (extra args go to `ray start`)
#   clusters/local.sh --resources='{"teacher": 1, "trainer": 2}'   # custom resources, as on a cluster
#   clusters/local.sh stop                            # `ray stop`: stops EVERY Ray instance on this machine
#
# Then submit runs through the Jobs API from this repository's root. The client must be in token mode
# too, or it sends no token and the head answers 401:
#
#   export RAY_AUTH_MODE=token
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- gemini-ray distill train.max_steps=20
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       gemini-ray distill 'teacher.resources={teacher: 1}' 'train.resources_per_worker={trainer: 1}'
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- gemini-ray tune
#
# or run the CLI directly against it: `RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:6379 gemini-ray distill`.
# The dashboard (http://127.0.0.1:8265) asks for the token once: `RAY_AUTH_MODE=token ray get-auth-token`.
#
# What loopback covers: the dashboard and Jobs API listen on 127.0.0.1 only. Ray itself maps
# --node-ip-address=127.0.0.1 to this machine's routable address, and its GCS and raylet gRPC ports listen on
# all interfaces; the token guards those too (every RPC carries it), but firewall them on untrusted networks.
#
# Token authentication (Ray >= 2.52): RAY_AUTH_MODE=token on the head and on every client; the token is a
# shared secret read from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
# `ray start --head` does not make a token (ray.init() does): `ray get-auth-token --generate` writes one to
# ~/.ray/auth_token if none exists. Never commit that file or paste the token into configs.
set -euo pipefail

RAY_PORT="${RAY_PORT:-6379}"            # GCS port; change both ports to run next to another Ray instance
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"  # dashboard and Jobs API

if [[ "${1:-}" == "stop" ]]; then
    exec ray stop
fi

# Ray Data keeps a dead dataset's share of the cluster until its request expires (180 s by default);
# gemini_ray needs 30 s (see gemini_ray/__init__.py). Every process of this Ray instance inherits it.
export RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S=30
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25  # see gemini_ray/__init__.py
# Token authentication stays on: set explicitly, so the head never starts open.
export RAY_AUTH_MODE=token
ray get-auth-token --generate > /dev/null  # keeps an existing token; never prints it here

ray start --head \
    --node-ip-address=127.0.0.1 \
    --port="$RAY_PORT" \
    --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD_PORT" \
    "$@"

echo "Ray head on 127.0.0.1:$RAY_PORT, Jobs API on http://127.0.0.1:$DASHBOARD_PORT (token auth on). Submit with"
echo "  export RAY_AUTH_MODE=token"
echo "  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- gemini-ray distill"
