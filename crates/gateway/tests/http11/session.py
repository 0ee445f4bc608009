# The same early errors through a `requests` Session (connection pool, keep-alive): no
# RemoteDisconnected on the request after an error. argv: url token stream.
import sys

import requests

url, token, stream = sys.argv[1], sys.argv[2], sys.argv[3]
s = requests.Session()
auth = {"Authorization": "Bearer " + token}
octets = {"Content-Type": "application/offset+octet-stream"}
body = b"y" * 20_000
p = url + "/v1/streams/" + stream
for method, headers in [
    ("PATCH", {**octets, "Stream-Offset": "0"}),
    ("PATCH", {**auth, **octets, "Stream-Offset": "0"}),
    ("PATCH", {**auth, **octets, "Stream-Offset": "0"}),
    ("PATCH", {**auth, "Stream-Offset": "20000"}),
    ("DELETE", {**octets}),
]:
    r = s.request(method, p, headers=headers, data=body, timeout=10)
    code = r.json()["error"] if r.status_code >= 400 else "-"
    print(r.status_code, code, flush=True)
r = s.head(p, headers=auth, timeout=10)
print(r.status_code, r.headers.get("Stream-Offset"), flush=True)
