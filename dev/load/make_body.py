"""Writes a 10-notification POST body in Graph's real shape, signed with the development
clientState key (kid "local"), across 4 drives and 2 tenants. Used by dev/load/run.sh."""
import base64, hashlib, hmac, json, os, sys

KEY = bytes.fromhex("6772617068666565642d6465762d636c69656e7473746174652d6b65792d3031")
TENANTS = ["7a1d2b8e-3f4c-4e5a-9b6c-1d2e3f4a5b6c", "0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"]


def mint(tenant: str, drive: bytes) -> str:
    nonce = os.urandom(12)
    mac = hmac.new(KEY, b"graphfeed/clientState/v1\0local\0" + tenant.encode() + b"\0" + drive + nonce, hashlib.sha256).digest()[:16]
    return "v1.local." + base64.urlsafe_b64encode(drive + nonce + mac).rstrip(b"=").decode()


drives = [bytes([i + 1]) * 16 for i in range(4)]
value = []
for i in range(10):
    tenant = TENANTS[i % 2]
    value.append({
        "subscriptionId": f"2d6b1f5a-9c3e-4f7d-8a2b-6e4c1d9f3a{i:02d}",
        "clientState": mint(tenant, drives[i % 4]),
        "resource": "drives/b!3xYzExampleDriveId/root/",
        "tenantId": tenant,
        "resourceData": None,
        "subscriptionExpirationDateTime": "2026-12-20T08:00:00-08:00",
        "changeType": "updated",
    })
json.dump({"value": value}, sys.stdout)
