"""Measures notify's init (process start to ready) and its secret fetch, reported separately.

Starts moto, creates the notifications queue and the clientState key secret, then starts the
release `notify` binary N times with the Lambda runtime API pointing at a closed port: notify
logs `notify ready` (with init_ms and secret_fetch_ms) before it first calls the runtime API.
Process start to ready is measured from just before exec to the ready line's timestamp.

Run: make init-time   (after `cargo build --release -p notify`)
"""
import datetime, json, os, socket, statistics, subprocess, sys, time

import boto3

RUNS = int(os.environ.get("RUNS", "20"))
BIN = os.environ.get("NOTIFY_BIN", "target/release/notify")
port = socket.socket(); port.bind(("127.0.0.1", 0)); moto_port = port.getsockname()[1]; port.close()
moto = subprocess.Popen(["dev/moto/serve", "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    endpoint = f"http://127.0.0.1:{moto_port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", moto_port), timeout=0.2).close(); break
        except OSError:
            time.sleep(0.1)
    session = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    queue = boto3.client("sqs", **session).create_queue(QueueName="init-notifications.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    key = "6772617068666565642d6465762d636c69656e7473746174652d6b65792d3031"
    arn = boto3.client("secretsmanager", **session).create_secret(Name="init-keys", SecretString=json.dumps({"active": "local", "local": key}))["ARN"]
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               NOTIFICATIONS_QUEUE_URL=queue, AWS_LAMBDA_FUNCTION_NAME="notify", AWS_LAMBDA_RUNTIME_API="127.0.0.1:9", RUST_LOG="info")
    results = {}
    for mode, extra in (("secrets-manager", {"CLIENT_STATE_KEYS_SECRET_ARN": arn}), ("env key", {"CLIENT_STATE_KEY": key})):
        starts, inits, fetches = [], [], []
        for _ in range(RUNS):
            t0 = time.time()
            p = subprocess.Popen([BIN], env={**env, **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            ready = fetch = None
            for line in p.stderr:
                if "clientState keys loaded" in line:
                    fetch = json.loads(line)["secret_fetch_ms"]
                if "notify ready" in line:
                    ready = json.loads(line); break
            p.kill(); p.wait()
            ts = datetime.datetime.fromisoformat(ready["timestamp"].replace("Z", "+00:00")).timestamp()
            starts.append((ts - t0) * 1000); inits.append(ready["init_ms"]); fetches.append(fetch)
        results[mode] = (starts, inits, fetches)
        print(f"{mode:16s} process start→ready median {statistics.median(starts):6.1f} ms (max {max(starts):6.1f}); "
              f"in-process init median {statistics.median(inits):6.1f} ms; secret fetch median {statistics.median(fetches):6.1f} ms "
              f"(max {max(fetches):6.1f}) over {RUNS} runs")
finally:
    moto.kill()
